"""One trainer for every method (dadpo.methods): SFT, KD, dDPO, daDPO and the token-level extension.

Built on `accelerate`: one process on CPU or a GPU, or several under `accelerate launch` (data
parallel; DeepSpeed ZeRO-2 / FSDP through accelerate's config). The global batch is a setting, kept
fixed when the number of processes changes: accumulation = global / (per-device x processes), an
error if it does not divide.

Losses are normalised by the number of loss units (response tokens for SFT/KD, pairs for the DPO
family) in the whole global batch, counted before the step; so 1 x 4 accumulation, 4 x 1 and two
processes with half the accumulation all give the same update. The data order is a seeded
permutation per epoch, so a resumed run sees the same batches as an uninterrupted one.

A micro-batch's rows are packed into bins without padding waste (train.packing, dadpo.packing)
and token log-probs come from the LM head implementation train.lm_head resolves to (baselines.head).

Progress: a bar per run (step, loss, tokens/s, ETA) on the main process; every step's record goes to
`log.jsonl` and, with `train.log_with`, to accelerate's tracker (TensorBoard under `<out_dir>/trackers`,
or Weights & Biases). On a GPU (bf16 mixed precision) the trained model is saved in bf16: half the
disk, and the weights inference loads anyway.

Checkpoints hold no executable pickle: weights as safetensors, optimizer and RNG state through
accelerate (loaded with torch's weights_only unpickler), the step and the scheduler as JSON.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from baselines.head import pick_implementation
from dadpo.cache import atomic_dir, atomic_write_text, file_sha256, share_modes
from dadpo.config import TrainConfig
from dadpo.memory import PeakMemory
from dadpo.methods import Method, PolicyOutputs
from dadpo.packing import micro_batch, real_tokens
from dadpo.scoring import ResponseScorer


TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


def check_tracker(name: str) -> None:
    """Raise ValueError (one line) when the tracker `train.log_with` names is not installed."""
    import importlib.util

    if name != "none" and not any(importlib.util.find_spec(m) for m in TRACKER_PACKAGES[name]):
        raise ValueError(f"train.log_with={name} needs the {TRACKER_PACKAGES[name][0]} package "
                         f"(pip install {TRACKER_PACKAGES[name][0]})")


def tracker_config(cfg: TrainConfig, method: Method) -> dict:
    """The run's settings as the flat scalars trackers accept."""
    flat = {f"train.{k}": v for k, v in vars(cfg).items()}
    flat.update({f"objective.{k}": v for k, v in method.settings.items()})
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in flat.items()}


class CheckpointError(RuntimeError):
    """A training checkpoint that cannot be resumed safely (damaged, or holding unsafe content)."""


def _check_files(ckpt: Path, recorded: dict | None) -> None:
    """The checkpoint holds exactly the recorded files with their recorded sha256 (ValueError if not)."""
    if not isinstance(recorded, dict):
        raise ValueError("trainer_state.json records no file checksums")
    present = {str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file()} - {"trainer_state.json"}
    if present != set(recorded):
        raise ValueError(f"files not written by the trainer: {sorted(present - set(recorded))[:3]}, "
                         f"missing: {sorted(set(recorded) - present)[:3]}")
    for name, digest in recorded.items():
        if file_sha256(ckpt / name) != digest:
            raise ValueError(f"{name} differs from the checksum recorded when it was saved")


@dataclass
class TrainResult:
    method: str
    steps: int
    global_batch: int
    per_device_batch: int
    accumulation: int
    processes: int
    seconds: float
    tokens: int
    tokens_per_s: float
    peak_memory_mb: float
    final_loss: float
    model_dir: str
    log: list = field(default_factory=list)  # one record per optimizer step


def read_log(path: Path) -> list[dict]:
    """The records of a training log; a last line cut by a kill is dropped with a warning naming the file."""
    if not path.is_file():
        return []
    out = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            if i < len(lines) - 2:  # damage before the last line is not a cut append
                raise CheckpointError(f"training log {path} is damaged at line {i + 1}") from None
            warnings.warn(f"training log {path}: dropped a last line cut mid-write", stacklevel=2)
    return out


class Trainer:
    """Train `model` with `method` on examples; per-step logs go to `out_dir/log.jsonl`.

    Examples (dicts): every method has "chosen" = {"input_ids", "response_mask"} (the teacher's
    answer); the DPO family adds "rejected" and the frozen sequence log-probs "ref_chosen",
    "ref_rejected", "te_chosen", "te_rejected" (summed, with "*_count" token counts); KD adds
    "kd" = (logprobs [n, k], ids [n, k], tail [n][, sample_logprobs [n, m], sample_ids [n, m]]) of the
    teacher's top-k (and tail samples) for chosen's tokens.
    """

    def __init__(self, model, tokenizer, method: Method, train_cfg: TrainConfig, out_dir: str | Path,
                 seed: int = 0, mixed_precision: str | None = None, cpu: bool | None = None):
        from accelerate import Accelerator

        self.method, self.cfg, self.seed = method, train_cfg, seed
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if mixed_precision is None:
            mixed_precision = "bf16" if torch.cuda.is_available() else "no"
        check_tracker(train_cfg.log_with)
        tracking = {} if train_cfg.log_with == "none" else {"log_with": train_cfg.log_with,
                                                             "project_dir": str(self.out_dir / "trackers")}
        self.acc = Accelerator(mixed_precision=mixed_precision, cpu=bool(cpu), **tracking)
        n = self.acc.num_processes
        if n > 1 and self.acc.distributed_type.name == "NO":  # e.g. an FSDP config launched without GPUs
            raise ValueError(f"{n} processes but accelerate set up no distributed training: they would train "
                             "separately, without syncing gradients (FSDP needs GPUs; on CPUs use the DDP config)")
        per_step = train_cfg.per_device_batch * n
        if train_cfg.global_batch % per_step:
            raise ValueError(f"train.global_batch={train_cfg.global_batch} is not a multiple of per_device_batch "
                             f"x processes = {per_step}")
        self.accum = train_cfg.global_batch // per_step
        self.deepspeed = self.acc.distributed_type.name == "DEEPSPEED"
        if self.deepspeed:
            self._configure_deepspeed(train_cfg)
        if train_cfg.lora:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=train_cfg.lora_r, lora_alpha=2 * train_cfg.lora_r,
                                                     target_modules="all-linear", task_type="CAUSAL_LM"))
        if train_cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.model = model
        self.tokenizer = tokenizer
        params = [p for p in model.parameters() if p.requires_grad]
        lr = train_cfg.sft_lr if method.sft_schedule else train_cfg.lr
        # one kernel for all parameters on CUDA; elsewhere one op per step over the parameter list
        kernel = {"fused": True} if self.acc.device.type == "cuda" else {"foreach": True}
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=train_cfg.weight_decay, **kernel)
        self.head = pick_implementation(train_cfg.lm_head, self.acc.device)
        scorer = ResponseScorer(model, train_cfg.logit_chunk, self.head, train_cfg.liger_chunk_mem_const)
        self.scorer, self.opt = self.acc.prepare(scorer, opt)
        self.scheduler = None  # set by train(); step() works without one (the benchmark)

    def _configure_deepspeed(self, train_cfg: TrainConfig) -> None:
        """DeepSpeed accumulates, clips and steps inside backward: it gets this run's micro-batch,
        accumulation and clipping, so that the global batch stays the one in the config."""
        ds = self.acc.state.deepspeed_plugin.deepspeed_config
        stage = int(ds.get("zero_optimization", {}).get("stage", 0))
        if stage > 2:
            raise ValueError(f"DeepSpeed ZeRO stage {stage} is not supported (the trainer saves the unwrapped "
                             "model); use ZeRO-2 (reproduce/configs/accelerate/deepspeed_zero2.yaml) or FSDP")
        ds["train_micro_batch_size_per_gpu"] = train_cfg.per_device_batch
        ds["gradient_accumulation_steps"] = self.accum  # accelerate derives train_batch_size from these
        ds["gradient_clipping"] = train_cfg.max_grad_norm
        self.acc.gradient_accumulation_steps = self.accum

    # --- one micro-batch -------------------------------------------------------------------
    def loss_sum(self, exs: list[dict]):
        """(sum of the loss over this micro-batch's units, metrics, tokens seen) for examples `exs`."""
        rows = [e[a] for a in self.method.answers for e in exs]
        b = micro_batch(rows, self.tokenizer.pad_token_id, self.cfg.packing)
        ntok = real_tokens(b)
        values, labels, row = self.scorer(**{k: v.to(self.acc.device) for k, v in b.items()},
                                          want_logits=self.method.wants_logits)
        out = (PolicyOutputs(labels, row, len(rows), logits=values) if self.method.wants_logits
               else PolicyOutputs(labels, row, len(rows), lp=values))
        loss, metrics = self.method.loss(out, exs)
        return loss, metrics, ntok

    # --- one optimizer step ----------------------------------------------------------------
    def step(self, batch: list[dict]) -> dict:
        """One optimizer step on one global batch (each process takes its share of the micro-batches):
        forward, backward, clipping, optimizer and scheduler. Returns the step's loss, tokens,
        gradient norm and the method's metrics, reduced over processes."""
        acc, units = self.acc, self.method.units
        rank, nproc = acc.process_index, acc.num_processes
        pdb = self.cfg.per_device_batch
        micro = [batch[j:j + pdb] for j in range(0, len(batch), pdb)]
        mine = micro[rank::nproc]
        units_total = sum(units(e) for e in batch)
        step_loss = torch.zeros((), device=acc.device)
        sums: dict = {}
        tokens = 0
        for j, exs in enumerate(mine):
            if self.deepspeed:  # counts micro-batches: the last one is DeepSpeed's step boundary
                sync = acc.accumulate()
            else:
                sync = nullcontext() if j == len(mine) - 1 else acc.no_sync(self.scorer)
            with sync:
                with acc.autocast():
                    loss_sum, metrics, ntok = self.loss_sum(exs)
                # DDP and DeepSpeed average gradients over processes (x nproc makes that a sum);
                # DeepSpeed also divides by its accumulation steps (x accum undoes it).
                acc.backward(loss_sum / units_total * nproc * (self.accum if self.deepspeed else 1))
            step_loss += loss_sum.detach() / units_total
            w = sum(units(e) for e in exs) / units_total
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v) * w
            tokens += ntok
        # under DeepSpeed these already happened inside the last backward (the calls are no-ops there,
        # and clip_grad_norm_ returns DeepSpeed's norm)
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.opt.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.opt.zero_grad(set_to_none=True)
        keys = sorted(sums)
        stats = torch.tensor([float(step_loss), float(tokens)] + [sums[k] for k in keys], device=acc.device,
                             dtype=torch.float64)
        stats = acc.reduce(stats, reduction="sum").tolist()
        return {"loss": stats[0], "tokens": int(stats[1]),
                "grad_norm": float("nan") if grad_norm is None else float(grad_norm),
                **dict(zip(keys, stats[2:]))}

    # --- the loop ----------------------------------------------------------------------------
    def _order(self, n: int, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        return torch.randperm(n, generator=g).tolist()

    def train(self, examples: list[dict], max_steps: int | None = None) -> TrainResult:
        from transformers import get_scheduler

        cfg, acc = self.cfg, self.acc
        G = cfg.global_batch
        if len(examples) < G:
            raise ValueError(f"{len(examples)} training examples are fewer than one global batch ({G})")
        steps_per_epoch = len(examples) // G
        epochs = cfg.sft_epochs if self.method.sft_schedule else cfg.epochs
        total = max(1, math.ceil(epochs * steps_per_epoch))
        # outside prepare(): accelerate would step it once per process
        self.scheduler = get_scheduler("cosine", self.opt, num_warmup_steps=int(cfg.warmup_ratio * total),
                                       num_training_steps=total)
        log_path = self.out_dir / "log.jsonl"
        start = self._resume()
        log = [r for r in read_log(log_path) if r["step"] <= start] if start else []
        if acc.is_main_process:  # drop log lines of steps that will be redone
            atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in log))
        stop = total if max_steps is None else min(total, max_steps)
        t0, tokens, last_loss = time.perf_counter(), 0, float("nan")
        tracking = cfg.log_with != "none"
        if tracking:
            acc.init_trackers(self.method.name, config=tracker_config(cfg, self.method))
        bar = tqdm(total=stop, initial=start, desc=f"train {self.method.name}", unit="step", leave=False,
                   dynamic_ncols=True, disable=not acc.is_main_process)
        self.scorer.train()
        with PeakMemory(acc.device) as peak:
            for step in range(start, stop):
                epoch, within = divmod(step, steps_per_epoch)
                idx = self._order(len(examples), epoch)[within * G:(within + 1) * G]
                stats = self.step([examples[i] for i in idx])
                tokens += stats["tokens"]
                last_loss = stats["loss"]
                elapsed, lr = time.perf_counter() - t0, self.scheduler.get_last_lr()[0]
                bar.set_postfix(loss=f"{last_loss:.4g}", tok_s=f"{tokens / max(elapsed, 1e-9):.0f}", refresh=False)
                bar.update()
                if acc.is_main_process:
                    rec = {"step": step + 1, "epoch": round((step + 1) / steps_per_epoch, 4),
                           "lr": lr, "elapsed_s": round(elapsed, 3), **stats}
                    log.append(rec)
                    with open(log_path, "a", encoding="utf-8") as f:  # live progress; the result keeps the log
                        f.write(json.dumps(rec) + "\n")
                if tracking:
                    acc.log({k: v for k, v in stats.items() if isinstance(v, (int, float))}
                            | {"lr": lr}, step=step + 1)
                if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < stop:
                    self._save_checkpoint(step + 1)
        bar.close()
        if tracking:
            acc.end_training()
        seconds = time.perf_counter() - t0
        if stop < total:  # interrupted on purpose (max_steps): keep a resumable checkpoint
            self._save_checkpoint(stop)
            model_dir = ""
        else:
            model_dir = str(self.save_model(self.out_dir / "model"))
        return TrainResult(self.method.name, stop, G, cfg.per_device_batch, self.accum, acc.num_processes, seconds,
                           tokens, tokens / max(seconds, 1e-9), peak.peak_mb, last_loss, model_dir, log)

    def _resume(self) -> int:
        """The step to resume from (0 without a checkpoint); raises CheckpointError if it cannot be loaded.

        Only the files `_save_checkpoint` recorded, with the recorded checksums, are accepted: a file
        planted in the folder (say a pickle that accelerate would open) or a changed byte refuses the
        checkpoint before anything in it is read, and so does a training log missing a step before it."""
        ckpt = self.out_dir / "checkpoint"
        state_file = ckpt / "trainer_state.json"
        if not state_file.is_file():
            return 0
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
            _check_files(ckpt, state.get("files"))
            self.acc.load_state(str(ckpt))  # safetensors weights; weights_only unpickler for the rest
            self.scheduler.load_state_dict(state["scheduler"])
            step = int(state["step"])
        except Exception as e:  # noqa: BLE001 - any damage: the caller retrains from the start
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise CheckpointError(f"checkpoint {ckpt} cannot be resumed ({type(e).__name__}: {first})") from e
        log_path = self.out_dir / "log.jsonl"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a cut last line is reported below if it matters
            logged = [r.get("step") for r in read_log(log_path) if r.get("step", 0) <= step]
        if logged != list(range(1, step + 1)):
            lost = sorted(set(range(1, step + 1)) - set(logged)) or logged
            raise CheckpointError(f"training log {log_path} does not hold the steps before the checkpoint "
                                  f"(step {', step '.join(map(str, lost[:5]))} missing or repeated)")
        return step

    def _save_checkpoint(self, step: int) -> None:
        ckpt = self.out_dir / "checkpoint"
        tmp = self.out_dir / ".checkpoint.tmp"
        self.acc.wait_for_everyone()
        if self.acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        self.acc.save_state(str(tmp))
        self.acc.wait_for_everyone()  # every process's RNG file is written before the checksums
        if self.acc.is_main_process:
            state = {"step": step, "method": self.method.name, "scheduler": self.scheduler.state_dict(),
                     "files": {str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}}
            (tmp / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")
            share_modes(tmp)
            old = self.out_dir / ".checkpoint.old"
            if ckpt.exists():
                os.replace(ckpt, old)
            os.replace(tmp, ckpt)
            shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()

    def save_model(self, folder: Path) -> Path:
        """The trained policy as a plain model folder (LoRA merged), written atomically."""
        self.acc.wait_for_everyone()
        model = self.acc.unwrap_model(self.scorer).model
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        if self.acc.mixed_precision == "bf16":  # training is over: the bf16 copy is what inference loads
            model = model.to(torch.bfloat16)
        if self.acc.is_main_process:
            with atomic_dir(folder) as tmp:
                model.save_pretrained(tmp, safe_serialization=True)
                self.tokenizer.save_pretrained(tmp)
        self.acc.wait_for_everyone()
        return folder
