"""One trainer for every method (SFT, KD, dDPO, daDPO and the token-level extension).

Built on `accelerate`: one process on CPU or a GPU, or several under `accelerate launch` (data
parallel; DeepSpeed / FSDP through accelerate's config). The global batch is a setting, kept fixed
when the number of processes changes: accumulation = global / (per-device x processes), an error if
it does not divide.

Losses are normalised by the number of loss units (response tokens for SFT/KD, pairs for the DPO
family) in the whole global batch, counted before the step; so 1 x 4 accumulation, 4 x 1 and two
processes with half the accumulation all give the same update. The data order is a seeded
permutation per epoch, so a resumed run sees the same batches as an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import os
import resource
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from baselines.ddpo import ddpo_loss
from baselines.kd import kd_loss
from baselines.sft import sft_loss
from dadpo.cache import atomic_dir, atomic_write_text
from dadpo.chat import pad_batch
from dadpo.config import ObjectiveConfig, TrainConfig
from dadpo.objectives import dadpo_loss, token_dadpo_loss
from dadpo.scoring import ResponseScorer, per_sequence

PAIR_METHODS = ("ddpo", "dadpo", "dadpo_token")
TOKEN_METHODS = ("sft", "kd")


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
    log_file: str
    model_dir: str
    extra: dict = field(default_factory=dict)


def _reset_peak_memory() -> None:
    """Start a fresh peak for this training run (the pipeline runs several stages in one process)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # Linux: "5" resets the process's peak resident set size (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_memory_mb() -> float:
    """Peak GPU memory allocated (CUDA), else peak RSS since _reset_peak_memory (process peak if not Linux)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # KiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _units(method: str, ex: dict) -> int:
    """Loss units of one example: its response tokens (SFT/KD) or one pair (DPO family)."""
    if method in TOKEN_METHODS:
        return max(1, sum(ex["chosen"]["response_mask"][1:]))
    return 1


class Trainer:
    """Train `model` on `examples` with `method`; per-step logs go to `out_dir/log.jsonl`.

    Examples (dicts): every method has "chosen" = {"input_ids", "response_mask"} (the teacher's
    answer); the DPO family adds "rejected" and the frozen sequence log-probs "ref_chosen",
    "ref_rejected", "te_chosen", "te_rejected" (summed, with "*_count" token counts); KD adds
    "kd" = (logprobs [n, k], ids [n, k], tail [n]) of the teacher's top-k for chosen's tokens.
    """

    def __init__(self, model, tokenizer, method: str, train_cfg: TrainConfig, obj_cfg: ObjectiveConfig,
                 out_dir: str | Path, seed: int = 0, mixed_precision: str | None = None, cpu: bool | None = None,
                 online_teacher=None):
        from accelerate import Accelerator

        if method not in TOKEN_METHODS + PAIR_METHODS:
            raise ValueError(f"unknown method {method!r} (known: {', '.join(TOKEN_METHODS + PAIR_METHODS)})")
        self.method, self.cfg, self.obj, self.seed = method, train_cfg, obj_cfg, seed
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if mixed_precision is None:
            mixed_precision = "bf16" if torch.cuda.is_available() else "no"
        self.acc = Accelerator(mixed_precision=mixed_precision, cpu=bool(cpu))
        n = self.acc.num_processes
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
        self.opt = torch.optim.AdamW(params, lr=train_cfg.sft_lr if method == "sft" else train_cfg.lr,
                                     weight_decay=train_cfg.weight_decay)
        self.scorer = ResponseScorer(model, train_cfg.logit_chunk)
        # KD's online-teacher mode (checks the top-k cache): full teacher logits per batch.
        self.teacher = None
        if online_teacher is not None:
            self.teacher = ResponseScorer(online_teacher.to(self.acc.device).eval())

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
    def _batch(self, rows: list[dict]) -> dict:
        b = pad_batch(rows, self.tokenizer.pad_token_id)
        return {k: v.to(self.acc.device) for k, v in b.items()}

    def _seq_logps(self, rows):
        b = self._batch(rows)
        lp, _, ex = self.scorer(b["input_ids"], b["attention_mask"], b["response_mask"])
        sums, counts = per_sequence(lp, ex, len(rows))
        if self.obj.length_average:
            sums = sums / counts.clamp(min=1)
        return sums, b

    def _frozen(self, exs, key):
        v = torch.tensor([e[key] for e in exs], dtype=torch.float64)
        if self.obj.length_average:
            v = v / torch.tensor([max(1, e[key + "_count"]) for e in exs], dtype=torch.float64)
        return v.to(self.acc.device, torch.float32)

    def _kd_targets(self, exs, keys=("kd",)):
        """Teacher top-k rows for the response tokens of `exs`, in the scorer's row order."""
        parts = [[e[k][i] for k in keys for e in exs] for i in range(3)]
        dev = self.acc.device
        return (torch.cat(parts[0]).float().to(dev)[None], torch.cat(parts[1]).long().to(dev)[None],
                torch.cat(parts[2]).float().to(dev)[None])

    def _kd(self, logits, exs, b):
        o = self.obj
        mask = torch.ones(logits.shape[:-1], device=logits.device)[None]
        if self.teacher is None:
            return kd_loss(logits[None], mask, o.divergence, o.kd_temperature, o.jsd_lambda, o.skew_alpha,
                           teacher_topk=self._kd_targets(exs))
        with torch.no_grad():
            t_logits, _, _ = self.teacher(b["input_ids"], b["attention_mask"], b["response_mask"], want_logits=True)
        v = min(t_logits.shape[-1], logits.shape[-1], len(self.tokenizer))  # padded rows cut
        return kd_loss(logits[None, :, :v], mask, o.divergence, o.kd_temperature, o.jsd_lambda, o.skew_alpha,
                       teacher_logits=t_logits[None, :, :v])

    def loss_sum(self, exs: list[dict]):
        """(sum of the loss over this micro-batch's units, metrics, tokens seen)."""
        m = self.method
        if m in TOKEN_METHODS:
            b = self._batch([e["chosen"] for e in exs])
            if m == "sft":
                lp, _, _ = self.scorer(b["input_ids"], b["attention_mask"], b["response_mask"])
                loss, metrics = sft_loss(lp[None], torch.ones_like(lp)[None])
                units = lp.numel()
            else:
                logits, _, _ = self.scorer(b["input_ids"], b["attention_mask"], b["response_mask"], want_logits=True)
                loss, metrics = self._kd(logits, exs, b)
                units = logits.shape[0]
            return loss * units, metrics, int(b["attention_mask"].sum())
        rows = [e["chosen"] for e in exs] + [e["rejected"] for e in exs]
        lps, b = self._seq_logps(rows)
        pc, pr = lps[: len(exs)], lps[len(exs):]
        rc, rr = self._frozen(exs, "ref_chosen"), self._frozen(exs, "ref_rejected")
        if m == "ddpo":
            loss, metrics = ddpo_loss(pc, pr, rc, rr, self.obj.beta)
        elif m == "dadpo":
            tc, tr = self._frozen(exs, "te_chosen"), self._frozen(exs, "te_rejected")
            loss, metrics = dadpo_loss(pc, pr, rc, rr, tc, tr, self.obj.beta1, self.obj.beta2)
        else:  # extension (not in the paper): dDPO + lambda * token KD on chosen and rejected
            logits, _, _ = self.scorer(b["input_ids"], b["attention_mask"], b["response_mask"], want_logits=True)
            o = self.obj
            mask = torch.ones(logits.shape[:-1], device=logits.device)[None]
            loss, metrics = token_dadpo_loss(pc, pr, rc, rr, o.beta, logits[None], mask, o.token_kd_lambda,
                                             o.divergence, o.kd_temperature, o.jsd_lambda, o.skew_alpha,
                                             teacher_topk=self._kd_targets(exs, ("kd", "kd_rejected")))
        return loss * len(exs), metrics, int(b["attention_mask"].sum())

    # --- the loop ----------------------------------------------------------------------------
    def _order(self, n: int, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        return torch.randperm(n, generator=g).tolist()

    def train(self, examples: list[dict], max_steps: int | None = None, log_every: int = 1) -> TrainResult:
        from transformers import get_scheduler

        cfg, acc = self.cfg, self.acc
        G = cfg.global_batch
        if len(examples) < G:
            raise ValueError(f"{len(examples)} training examples are fewer than one global batch ({G})")
        steps_per_epoch = len(examples) // G
        epochs = cfg.sft_epochs if self.method == "sft" else cfg.epochs
        total = max(1, math.ceil(epochs * steps_per_epoch))
        sched = get_scheduler("cosine", self.opt, num_warmup_steps=int(cfg.warmup_ratio * total),
                              num_training_steps=total)
        # The scheduler stays outside prepare(): accelerate would step it once per process.
        self.scorer, self.opt = acc.prepare(self.scorer, self.opt)
        acc.register_for_checkpointing(sched)
        ckpt = self.out_dir / "checkpoint"
        log_path = self.out_dir / "log.jsonl"
        start = 0
        if (ckpt / "trainer_state.json").is_file():
            acc.load_state(str(ckpt))
            start = json.loads((ckpt / "trainer_state.json").read_text())["step"]
            if acc.is_main_process:  # drop log lines of steps that will be redone
                lines = log_path.read_text().splitlines() if log_path.exists() else []
                atomic_write_text(log_path, "".join(l + "\n" for l in lines if json.loads(l)["step"] <= start))
        elif acc.is_main_process and log_path.exists():
            log_path.unlink()
        stop = total if max_steps is None else min(total, max_steps)
        _reset_peak_memory()
        t0, tokens, last_loss = time.perf_counter(), 0, float("nan")
        rank, nproc = acc.process_index, acc.num_processes
        self.scorer.train()
        for step in range(start, stop):
            epoch, within = divmod(step, steps_per_epoch)
            idx = self._order(len(examples), epoch)[within * G:(within + 1) * G]
            micro = [idx[j:j + cfg.per_device_batch] for j in range(0, G, cfg.per_device_batch)]
            mine = micro[rank::nproc]
            units_total = sum(_units(self.method, examples[i]) for i in idx)
            step_loss = torch.zeros((), device=acc.device)
            sums: dict = {}
            step_tokens = 0
            for j, mb in enumerate(mine):
                exs = [examples[i] for i in mb]
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
                w = sum(_units(self.method, e) for e in exs) / units_total
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * w
                step_tokens += ntok
            # under DeepSpeed these three already happened inside the last backward (the calls are no-ops
            # there, and clip_grad_norm_ returns DeepSpeed's norm)
            grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            self.opt.step()
            sched.step()
            self.opt.zero_grad(set_to_none=True)
            stats = torch.tensor([float(step_loss), float(step_tokens)] + [sums[k] for k in sorted(sums)],
                                 device=acc.device, dtype=torch.float64)
            stats = acc.reduce(stats, reduction="sum")
            tokens += int(stats[1])
            last_loss = float(stats[0])
            if acc.is_main_process and ((step + 1) % log_every == 0 or step + 1 == stop):
                rec = {"step": step + 1, "epoch": round((step + 1) / steps_per_epoch, 4), "loss": last_loss,
                       "lr": sched.get_last_lr()[0],
                       "grad_norm": float("nan") if grad_norm is None else float(grad_norm),
                       "tokens": int(stats[1]), "elapsed_s": round(time.perf_counter() - t0, 3)}
                rec.update({k: float(v) for k, v in zip(sorted(sums), stats[2:].tolist())})
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < stop:
                self._save_checkpoint(step + 1)
        seconds = time.perf_counter() - t0
        if stop < total:  # interrupted on purpose (max_steps): keep a resumable checkpoint
            self._save_checkpoint(stop)
            model_dir = ""
        else:
            model_dir = str(self.save_model(self.out_dir / "model"))
        return TrainResult(self.method, stop, G, cfg.per_device_batch, self.accum, acc.num_processes, seconds,
                           tokens, tokens / max(seconds, 1e-9), _peak_memory_mb(), last_loss, str(log_path),
                           model_dir)

    def _save_checkpoint(self, step: int) -> None:
        ckpt = self.out_dir / "checkpoint"
        tmp = self.out_dir / ".checkpoint.tmp"
        self.acc.wait_for_everyone()
        if self.acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        self.acc.save_state(str(tmp))
        if self.acc.is_main_process:
            (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "method": self.method}))
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
        if self.acc.is_main_process:
            with atomic_dir(folder) as tmp:
                model.save_pretrained(tmp, safe_serialization=True)
                self.tokenizer.save_pretrained(tmp)
        self.acc.wait_for_everyone()
        return folder


def result_dict(r: TrainResult) -> dict:
    return asdict(r)
