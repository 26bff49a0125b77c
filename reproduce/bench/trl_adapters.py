"""TRL's side of the comparisons, through TRL's public API only.

DPO: `trl.DPOTrainer` with `precompute_ref_log_probs=True`, so its loss reads the reference
log-probs from the batch and both sides use the same frozen numbers. Its `data_collator`
(DataCollatorForPreference) batches our token ids; a step is its `compute_loss` (forward with its
fused LM head, the DPO loss and its metrics) under its accelerator's autocast, backward, clipping
and the optimizer its `create_optimizer` builds from its config. Building the trainer hashes the
model's weights and scores a one-row data set (TRL's own precompute): set-up, never timed.

KD: TRL's stable `DistillationTrainer` trains on-policy only (it samples completions every step)
and has no public entry for a loss on fixed completions. The closest public thing is the
experimental `GKDTrainer` with lmbda=0 (the data set's completions), seq_kd=False and beta=0
(forward KL): teacher online, full-vocabulary logits. Its public static `generalized_jsd_loss` is
the KD parity reference. It needs equal vocabulary sizes in the two configs.

Both trainers patch the model's forward with TRL's fused LM head (DPOTrainer, and SFTTrainer under
GKDTrainer), each asking for the outputs it needs; on a shared model the last patch serves every
call, so a TrlDPO must be built after any TrlKD on the same student.
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from dadpo.chat import pad_batch

IGNORE = -100


def split_prompt(enc: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of one encoded answer."""
    start = enc["response_mask"].index(1)
    return enc["input_ids"][:start], enc["input_ids"][start:]


def preference_rows(exs: list[dict]) -> list[dict]:
    """Our examples as DataCollatorForPreference takes them: token ids and reference log-probs."""
    rows = []
    for e in exs:
        pc, c = split_prompt(e["chosen"])
        pr, r = split_prompt(e["rejected"])
        if pc != pr:
            raise ValueError(f"example {e.get('id')}: chosen and rejected prompts differ")
        rows.append({"prompt_ids": pc, "chosen_ids": c, "rejected_ids": r,
                     "ref_chosen_logps": e["ref_chosen"], "ref_rejected_logps": e["ref_rejected"]})
    return rows


def completion_batch(exs: list[dict], pad_id: int) -> dict:
    """Chosen answers right-padded, labels = response tokens (else -100): GKDTrainer's batch layout."""
    b = pad_batch([e["chosen"] for e in exs], pad_id)
    labels = b["input_ids"].masked_fill(b["response_mask"] == 0, IGNORE)
    return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "labels": labels}


def _common_args(dev: torch.device, lr: float) -> dict:
    cuda = dev.type == "cuda"
    return dict(report_to="none", use_cpu=not cuda, bf16=cuda, learning_rate=lr, weight_decay=0.0,
                max_grad_norm=1.0, optim="adamw_torch_fused" if cuda else "adamw_torch",
                per_device_train_batch_size=1, logging_strategy="no", save_strategy="no", disable_tqdm=True,
                dataloader_pin_memory=False, gradient_checkpointing=False)


@contextmanager
def _quiet():
    """Building a TRL trainer: no progress bars for its one-row data set, and no FutureWarning for the
    gradient checkpointing its configs default to (a name transformers 5.2x deprecates; we set it off)."""
    import datasets

    datasets.disable_progress_bars()
    old = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # the bar of TRL's reference precompute
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        datasets.enable_progress_bars()
        if old is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old


def _gkd():
    """TRL's experimental GKD trainer (its import warns that the API is unstable: the docstring above says so)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*trl.experimental.*")
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    return GKDConfig, GKDTrainer


def _one_row(**row):
    from datasets import Dataset

    return Dataset.from_list([row])


class _Stepper:
    """One optimizer step the way TRL's trainer does it, on a batch we give it."""
    trainer = None
    model = None

    def _to_device(self, batch: dict) -> dict:
        dev = self.trainer.accelerator.device
        return {k: v.to(dev) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _collate(self, exs: list[dict]) -> dict:
        raise NotImplementedError

    def loss(self, exs: list[dict]) -> float:
        """TRL's loss on `exs`, no update."""
        with torch.no_grad(), self.trainer.accelerator.autocast():
            return float(self.trainer.compute_loss(self.model, self._to_device(self._collate(exs))))

    def step(self, exs: list[dict]) -> float:
        tr = self.trainer
        if tr.optimizer is None:
            tr.create_optimizer()
        batch = self._to_device(self._collate(exs))
        with tr.accelerator.autocast():
            loss = tr.compute_loss(self.model, batch)
        tr.accelerator.backward(loss)
        tr.accelerator.clip_grad_norm_(self.model.parameters(), tr.args.max_grad_norm)
        tr.optimizer.step()
        tr.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def release(self) -> None:
        """Drop the optimizer state (the model is shared with the other implementations)."""
        if self.trainer is not None:
            self.trainer.optimizer = None
        self.trainer = None


class TrlDPO(_Stepper):
    def __init__(self, model, tokenizer, dev: torch.device, workdir: Path, beta: float, lr: float):
        from trl import DPOConfig, DPOTrainer

        with _quiet():
            args = DPOConfig(output_dir=str(Path(workdir) / "trl_dpo"), beta=beta, precompute_ref_log_probs=True,
                             max_length=None, **_common_args(dev, lr))
            self.trainer = DPOTrainer(model=model, args=args, processing_class=tokenizer,
                                      train_dataset=_one_row(prompt="Hi", chosen=" yes", rejected=" no"))
        self.model = model

    def _collate(self, exs):
        return self.trainer.data_collator(preference_rows(exs))


class TrlKD(_Stepper):
    def __init__(self, student, teacher, tokenizer, dev: torch.device, workdir: Path, lr: float):
        GKDConfig, GKDTrainer = _gkd()
        pad_id = tokenizer.pad_token_id
        with _quiet():
            args = GKDConfig(output_dir=str(Path(workdir) / "trl_gkd"), lmbda=0.0, beta=0.0, temperature=1.0,
                             seq_kd=False, **_common_args(dev, lr))
            self.trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, processing_class=tokenizer,
                                      train_dataset=_one_row(prompt="Hi", completion=" yes"),
                                      data_collator=lambda rows: completion_batch(rows, pad_id))
        self.model, self.pad_id = student, pad_id

    def _collate(self, exs):
        return completion_batch(exs, self.pad_id)


def trl_forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> float:
    """TRL's forward KL(teacher || student), mean over rows of [N, V] logits (GKD's beta = 0)."""
    return float(_gkd()[1].generalized_jsd_loss(student_logits, teacher_logits, beta=0.0))
