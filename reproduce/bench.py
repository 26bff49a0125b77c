"""Performance benchmark (issue 6): `python -m reproduce.bench [--case cpu|gpu|tiny]`.

Runs every implementation side by side in one process and merges one row per (case, device, stage,
implementation) into results/perf.csv, plus results/perf.provenance.json (device, versions,
settings, measured peaks, formulas). Stages:
  train     one optimizer step (forward, backward, clip, AdamW) of SFT, dDPO, daDPO and KD through
            this suite's Trainer, of TRL's DPOTrainer (precomputed reference log-probs, its own
            collator and training_step) and of TRL's DistillationTrainer loss path (online teacher,
            forward KL = beta 0), on the same batches; dDPO/TRL and KD/TRL loss parity in the same run
  score     teacher scoring: sequence log-probs and the top-k cache (dadpo.precompute)
  generate  decoding tokens/s at batch 1, 16, 64 against the memory-bandwidth floor
  kd_topk   bytes per token and KD-loss error of the top-k cache against the full vocabulary
Cases: cpu = SmolLM2-135M-Instruct teacher and its 20%-pruned copy on real ShareGPT prompts with
their own answers (fp32 training, bf16 inference as the suite picks on CPU); gpu = random-weight
Qwen2.5-1.5B student and Qwen2.5-7B teacher shapes, bf16; tiny = the gpu code path on tiny shapes
(a dry run: writes under runs/ unless --out is given).

FLOPs are model FLOPs of real tokens (padding excluded). N_body = parameters of the decoder
layers, V d = LM head, d_att = heads x head_dim, T = tokens, R = response tokens (the only
positions whose next token is scored), s = each sequence's length; causal attention counts half
of PaLM's 12 L d_att s per token:
  train  6 N_body T + 6 V d R + 6 L d_att sum(s^2)
  infer  2 N_body T + 2 V d R + 2 L d_att sum(s^2)
MFU = achieved FLOP/s over the dense matmul rate measured in the same process (same device, dtype).
Generation floor: weight bytes read per decoding step (N_body + V d) / measured copy bandwidth
(bytes read + written); share = measured decoding tokens/s / floor tokens/s.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import gc
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch

from dadpo.cache import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ["case", "device", "stage", "implementation", "device_name", "model", "params_m", "dtype", "batch",
           "seq_len_max", "tokens_per_step", "step_ms", "tokens_per_s", "peak_mem_mb", "tflops", "mfu",
           "bw_share", "ratio", "ratio_of", "loss", "parity_abs_diff", "k", "bytes_per_token", "kd_rel_err",
           "versions", "notes"]
KEY = ("case", "device", "stage", "implementation")
LR = 1e-9  # steps do all the work of a real update but leave the shared weights (and so the losses) in place
BETA = 0.1

QWEN_SHAPES = {  # Qwen2.5 configs (config.json of the hub repos); random weights
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "tiny-student": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True),
    "tiny-teacher": dict(hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=520, tie_word_embeddings=False),
}


# ------------------------------------------------------------------------------- facts, files
from reproduce.provenance import git_sha, versions  # noqa: E402  (one definition of provenance facts)
from reproduce.tables import fmt as _fmt  # noqa: E402


def versions_str(v: dict) -> str:
    return ";".join(f"{k}={v[k]}" for k in ("torch", "transformers", "accelerate", "trl") if v.get(k))


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name} ({torch.get_num_threads()} threads)"


def read_csv(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """Old rows whose key (case, device, stage, implementation) reappears are replaced by the new ones."""
    key = lambda r: tuple(str(r.get(k, "")) for k in KEY)  # noqa: E731
    fresh = {key(r) for r in new}
    return [r for r in old if key(r) not in fresh] + list(new)


def write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in COLUMNS})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), buf.getvalue())


def merge_into(csv_path: Path, prov_path: Path, rows: list[dict], prov: dict) -> None:
    write_csv(csv_path, merge_rows(read_csv(csv_path), rows))
    old = json.loads(Path(prov_path).read_text()) if Path(prov_path).is_file() else {}
    old.update(prov)
    atomic_write_text(Path(prov_path), json.dumps(old, indent=2, sort_keys=True, default=str) + "\n")


# ------------------------------------------------------------------------------- measuring
def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def matmul_peak_tflops(dev: torch.device, dtype: torch.dtype, n: int | None = None, inner: int | None = None,
                       reps: int = 5) -> float:
    """Dense n x n x n matmul rate on random data, TFLOP/s (median of `reps` timings of `inner` products)."""
    n = n or (8192 if dev.type == "cuda" else 1024)
    inner = inner or (10 if dev.type == "cuda" else 2)
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(reps):
        sync(dev)
        t = time.perf_counter()
        for _ in range(inner):
            a @ b
        sync(dev)
        times.append((time.perf_counter() - t) / inner)
    return 2 * n ** 3 / statistics.median(times) / 1e12


def copy_bandwidth_gbs(dev: torch.device, mbytes: int | None = None, inner: int = 5, reps: int = 5) -> float:
    """Device copy bandwidth, GB/s, counting bytes read plus bytes written."""
    n = (mbytes or (1024 if dev.type == "cuda" else 256)) * 2 ** 20 // 4
    src = torch.rand(n, device=dev)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(reps):
        sync(dev)
        t = time.perf_counter()
        for _ in range(inner):
            dst.copy_(src)
        sync(dev)
        times.append((time.perf_counter() - t) / inner)
    return 2 * n * 4 / statistics.median(times) / 1e9


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Memory a block adds at its peak, MB: CUDA allocated bytes, or on CPU the process RSS sampled
    every 2 ms (freed heap given back first, so earlier blocks' leftovers do not hide this one's)."""

    def __init__(self, dev: torch.device):
        self.dev, self.base, self.peak = dev, 0, 0
        self._stop = threading.Event()

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_bytes())

    def __enter__(self):
        gc.collect()
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
            torch.cuda.empty_cache()
            self.base = torch.cuda.memory_allocated(self.dev)
            torch.cuda.reset_peak_memory_stats(self.dev)
        else:
            _malloc_trim()
            self.base = self.peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
            self.peak = torch.cuda.max_memory_allocated(self.dev)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes())
        return False

    @property
    def added_mb(self) -> float:
        return (self.peak - self.base) / 2 ** 20


def model_bytes(*models) -> int:
    seen, total = set(), 0
    for m in models:
        for t in list(m.parameters()) + list(m.buffers()):
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


class Budget:
    def __init__(self, seconds: float):
        self.t0, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)


# ------------------------------------------------------------------------------- FLOPs
@dataclass
class Shape:
    layers: int
    d: int
    d_att: int
    vocab: int
    n_body: int
    n_total: int


def shape_of(model) -> Shape:
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel()
    return Shape(cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads * head_dim,
                 model.get_output_embeddings().weight.shape[0],
                 sum(p.numel() for p in model.get_decoder().layers.parameters()), total)


def model_flops(shape: Shape, lens: list[int], resp: int, train: bool) -> float:
    """Model FLOPs of one pass over sequences of real lengths `lens` with `resp` scored positions."""
    c = 6 if train else 2
    return c * (shape.n_body * sum(lens) + shape.vocab * shape.d * resp
                + shape.layers * shape.d_att * sum(s * s for s in lens))


def decode_weight_bytes(shape: Shape, dtype: torch.dtype) -> int:
    """Weights read per decoding step: every decoder layer plus the LM head (embedding rows: negligible)."""
    return (shape.n_body + shape.vocab * shape.d) * torch.tensor([], dtype=dtype).element_size()


def seq_stats(encs: list[dict]) -> tuple[list[int], int]:
    return [len(e["input_ids"]) for e in encs], sum(sum(e["response_mask"]) for e in encs)


# ------------------------------------------------------------------------------- data
def synthetic_pairs(n: int, vocab: int, seed: int = 0, prompt=(32, 160), chosen=(96, 352), rejected=(64, 352),
                    max_len: int = 512, low: int = 10) -> list[dict]:
    """Random-token (prompt, chosen, rejected) examples of varied lengths, encoded as the suite encodes them."""
    g = torch.Generator().manual_seed(seed)
    ri = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    toks = lambda k: torch.randint(low, vocab, (k,), generator=g).tolist()  # noqa: E731
    out = []
    for i in range(n):
        p = toks(ri(*prompt))
        c, r = toks(ri(*chosen))[: max_len - len(p)], toks(ri(*rejected))[: max_len - len(p)]
        out.append({"id": f"syn{i}",
                    "chosen": {"input_ids": p + c, "response_mask": [0] * len(p) + [1] * len(c)},
                    "rejected": {"input_ids": p + r, "response_mask": [0] * len(p) + [1] * len(r)}})
    return out


def split_prompt(enc: dict) -> tuple[list[int], list[int]]:
    start = enc["response_mask"].index(1)
    return enc["input_ids"][:start], enc["input_ids"][start:]


def trl_preference_rows(exs: list[dict]) -> list[dict]:
    """Our examples as TRL's DataCollatorForPreference takes them (tokenized, with reference log-probs)."""
    rows = []
    for e in exs:
        pc, c = split_prompt(e["chosen"])
        pr, r = split_prompt(e["rejected"])
        if pc != pr:
            raise ValueError(f"example {e.get('id')}: chosen and rejected prompts differ")
        rows.append({"prompt_ids": pc, "chosen_ids": c, "rejected_ids": r,
                     "ref_chosen_logps": e["ref_chosen"], "ref_rejected_logps": e["ref_rejected"]})
    return rows


def trl_distill_batch(exs: list[dict], pad_id: int) -> dict:
    """Prompt left-padded, completion right-padded: the layout TRL's DistillationTrainer trains on."""
    ps, cs = zip(*(split_prompt(e["chosen"]) for e in exs))
    P, C = max(map(len, ps)), max(map(len, cs))
    t = lambda rows: torch.tensor(rows, dtype=torch.long)  # noqa: E731
    return {"prompt_ids": t([[pad_id] * (P - len(p)) + p for p in ps]),
            "prompt_mask": t([[0] * (P - len(p)) + [1] * len(p) for p in ps]),
            "completion_ids": t([c + [pad_id] * (C - len(c)) for c in cs]),
            "completion_mask": t([[1] * len(c) + [0] * (C - len(c)) for c in cs])}


# ------------------------------------------------------------------------------- step functions
def _autocast(dev: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()


def make_trainer(model, tokenizer, method: str, batch: int, dev: torch.device, workdir: Path, **obj):
    from dadpo.config import ObjectiveConfig, TrainConfig
    from dadpo.methods import build_method
    from dadpo.trainer import Trainer

    cfg = TrainConfig(lr=LR, sft_lr=LR, per_device_batch=batch, global_batch=batch, max_len=4096)
    return Trainer(model, tokenizer, build_method(method, ObjectiveConfig(beta=BETA, beta1=BETA, beta2=BETA, **obj)),
                   cfg, workdir / method, cpu=dev.type == "cpu", mixed_precision="bf16" if dev.type == "cuda" else "no")


def our_step(tr, exs: list[dict]) -> float:
    """One optimizer step of the suite's Trainer on one global batch (its public step)."""
    return tr.step(exs)["loss"]


_TRL_DPO: dict = {}


def make_trl_dpo(model, tokenizer, dev: torch.device, workdir: Path):
    """A real TRL DPOTrainer with precomputed reference log-probs (built on a one-row data set), one per model."""
    if id(model) in _TRL_DPO:
        return _TRL_DPO[id(model)]
    from datasets import Dataset
    import trl.trainer.dpo_trainer as dpo_mod
    from trl import DPOConfig, DPOTrainer

    cuda = dev.type == "cuda"
    args = DPOConfig(output_dir=str(workdir / "trl_dpo"), report_to="none", use_cpu=not cuda, bf16=cuda,
                     beta=BETA, precompute_ref_log_probs=True, per_device_train_batch_size=1, max_length=None,
                     logging_strategy="no", save_strategy="no", disable_tqdm=True, dataloader_pin_memory=False,
                     learning_rate=LR)
    ds = Dataset.from_list([{"prompt": "Hi", "chosen": " yes", "rejected": " no"}])
    # hash_module only keys the init-time cache of that one row; hashing a 1.5B model costs ~10 s
    with mock.patch.object(dpo_mod, "hash_module", lambda m: "bench"):
        tr = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
    tr.current_gradient_accumulation_steps = 1  # set by train(); the bench calls training_step itself
    _TRL_DPO[id(model)] = tr
    return tr


def trl_dpo_step(trl_tr, model, rows: list[dict], opt, dev: torch.device) -> float:
    """TRL's collator + DPOTrainer.training_step (its loss, metrics and backward), then clip and AdamW."""
    batch = trl_tr.data_collator(rows)
    with _autocast(dev):  # what accelerate.prepare adds to the model forward under bf16=True
        loss = trl_tr.training_step(model, batch)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss)


def trl_dpo_loss(trl_tr, model, rows: list[dict], dev: torch.device) -> float:
    with torch.no_grad(), _autocast(dev):
        return float(trl_tr.compute_loss(model, trl_tr._prepare_inputs(trl_tr.data_collator(rows))))


def _distill_self(model) -> SimpleNamespace:
    import inspect

    return SimpleNamespace(model_kwarg_keys=inspect.signature(model.forward).parameters.keys(), _is_vlm=False)


def trl_kd_loss(student, teacher, batch: dict, vocab: int):
    """TRL DistillationTrainer._compute_loss for text: both backbones via its _get_last_hidden_state,
    then _chunked_divergence_loss (beta 0 = forward KL). The teacher head is cut to the student's rows."""
    from trl.trainer.distillation_trainer import DistillationTrainer, _chunked_divergence_loss

    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    K = batch["completion_ids"].shape[1]
    hs = DistillationTrainer._get_last_hidden_state(_distill_self(student), student, ids, mask, K)
    with torch.no_grad():
        ht = DistillationTrainer._get_last_hidden_state(_distill_self(teacher), teacher, ids, mask, K)
    sh, th = student.get_output_embeddings(), teacher.get_output_embeddings()
    loss, _, _ = _chunked_divergence_loss(hs, ht, sh.weight, th.weight[:vocab], batch["completion_mask"], 0.0,
                                          student_lm_head_bias=sh.bias,
                                          teacher_lm_head_bias=None if th.bias is None else th.bias[:vocab])
    return loss


def trl_kd_step(student, teacher, exs, pad_id, opt, dev, vocab) -> float:
    batch = {k: v.to(dev) for k, v in trl_distill_batch(exs, pad_id).items()}
    with _autocast(dev):
        loss = trl_kd_loss(student, teacher, batch, vocab)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def kd_full_and_trl(student, teacher, exs: list[dict], pad_id: int, dev: torch.device, ks=(), batch: int = 4):
    """Forward-KL KD loss on the chosen answers' response tokens: full vocabulary (ours), TRL's chunked
    loss on the same hidden states, and ours from a top-k cache stored as teacher_topk stores it.
    Returns (full, trl or None, {k: (loss_k, bytes_per_token, loss_k with an fp32 cache)}, tokens)."""
    from baselines.kd import kd_loss
    from dadpo.chat import pad_batch
    from baselines.numerics import topk_with_tail
    from dadpo.scoring import response_hidden

    hs, ht = [], []
    with torch.no_grad(), _autocast(dev):
        for i in range(0, len(exs), batch):
            b = {k: v.to(dev) for k, v in pad_batch([e["chosen"] for e in exs[i:i + batch]], pad_id).items()}
            hs.append(response_hidden(student, b["input_ids"], b["attention_mask"], b["response_mask"])[0])
            ht.append(response_hidden(teacher, b["input_ids"], b["attention_mask"], b["response_mask"])[0])
        hs, ht = torch.cat(hs), torch.cat(ht)
        sh, th = student.get_output_embeddings(), teacher.get_output_embeddings()
        V = sh.weight.shape[0]
        s_logits, t_logits = sh(hs).float(), th(ht)[:, :V].float()
        mask = torch.ones(1, hs.shape[0], device=dev)
        full = float(kd_loss(s_logits[None], mask, "forward_kl", teacher_logits=t_logits[None])[0])
        trl = None
        with contextlib.suppress(ImportError):
            from trl.trainer.distillation_trainer import _chunked_divergence_loss

            trl = float(_chunked_divergence_loss(hs[None], ht[None], sh.weight, th.weight[:V], mask, 0.0,
                                                 student_lm_head_bias=sh.bias,
                                                 teacher_lm_head_bias=None if th.bias is None else th.bias[:V])[0])
        out = {}
        for k in ks:
            lp, ids, tail = topk_with_tail(t_logits, k)
            cache = (lp.half(), ids.int(), tail.float())  # dadpo.precompute.teacher_topk's storage
            nbytes = sum(t.element_size() * t[0].numel() for t in cache)
            lk = kd_loss(s_logits[None], mask, "forward_kl",
                         teacher_topk=(cache[0].float()[None], cache[1].long()[None], cache[2][None]))[0]
            l32 = kd_loss(s_logits[None], mask, "forward_kl", teacher_topk=(lp[None], ids[None], tail[None]))[0]
            out[k] = (float(lk), nbytes, float(l32))
    return full, trl, out, int(hs.shape[0])


# ------------------------------------------------------------------------------- stages
@dataclass
class Ctx:
    case: str
    dev: torch.device
    dname: str
    vers: str
    peak_tflops: float
    bw_gbs: float
    rows: list
    out_csv: Path | None = None

    def add(self, **r) -> dict:
        row = {"case": self.case, "device": self.dev.type, "device_name": self.dname, "versions": self.vers, **r}
        self.rows.append(row)
        if self.out_csv is not None:  # after every row: a run cut short still leaves its rows
            write_csv(self.out_csv, self.rows)
        return row


def _timed(fn, dev):
    sync(dev)
    t = time.perf_counter()
    out = fn()
    sync(dev)
    return time.perf_counter() - t, out


def bench_train(ctx: Ctx, student, tokenizer, exs: list[dict], batch: int, warmup: int, steps: int, workdir: Path,
                methods=("sft", "ddpo", "dadpo", "kd", "trl_dpo", "trl_kd"), teacher=None, ratio_rounds: int = 4,
                label: str = "", fused_adamw: bool = False, budget: Budget | None = None) -> dict:
    dev, pad = ctx.dev, tokenizer.pad_token_id
    shape = shape_of(student)
    dtype = str(next(student.parameters()).dtype).replace("torch.", "")
    # as many distinct batches as timed steps, all seen in the warm-up: a batch shape met for the first time
    # costs a cuDNN SDPA plan build (~0.1-0.8 s on the H100), which is set-up, not step time
    batches = [exs[i:i + batch] for i in range(0, len(exs) - batch + 1, batch)][:max(1, steps)]
    warmup = max(warmup, len(batches))
    seq_max = max(len(e[a]["input_ids"]) for b in batches for e in b for a in ("chosen", "rejected"))
    student.train()
    res: dict = {}

    def make_opt(params):
        return torch.optim.AdamW(params, lr=LR, weight_decay=0.0, **({"fused": True} if fused_adamw else {}))

    def encs(name, b):
        return [e["chosen"] for e in b] + ([e["rejected"] for e in b] if name in ("ddpo", "dadpo", "trl_dpo") else [])

    for name in methods:
        if budget is not None and budget.left() < 20:
            ctx.add(stage="train", implementation=name + label, model=label.strip("@") or None, notes="skipped: time budget")
            continue
        models_used = [student] + ([teacher] if name == "trl_kd" else [])
        error = None
        try:
            trl_tr = make_trl_dpo(student, tokenizer, dev, workdir) if name == "trl_dpo" else None
            with PeakMemory(dev) as pm:
                if name == "trl_dpo":
                    opt = make_opt(student.parameters())
                    step = lambda b: trl_dpo_step(trl_tr, student, trl_preference_rows(b), opt, dev)  # noqa: E731
                elif name == "trl_kd":
                    opt, vocab = make_opt(student.parameters()), shape.vocab
                    step = lambda b: trl_kd_step(student, teacher, b, pad, opt, dev, vocab)  # noqa: E731
                else:
                    tr = make_trainer(student, tokenizer, name, batch, dev, workdir)
                    if fused_adamw:
                        tr.opt = make_opt([p for p in student.parameters() if p.requires_grad])
                    step = lambda b, tr=tr: our_step(tr, b)  # noqa: E731
                times, toks, flops, losses = [], 0, 0.0, []
                for i in range(warmup + steps):
                    b = batches[i % len(batches)]
                    dt, loss = _timed(lambda: step(b), dev)
                    if i >= warmup:
                        lens, resp = seq_stats(encs(name, b))
                        times.append(dt)
                        toks += sum(lens)
                        flops += model_flops(shape, lens, resp, train=True)
                        if name == "trl_kd":  # the online teacher's forward is part of TRL's step
                            flops += model_flops(shape_of(teacher), lens, resp, train=False)
                        losses.append(loss)
        except Exception as e:  # OOM, TRL missing or broken: a row that says so, then the next one
            error = f"failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"
        opt = tr = step = None
        student.zero_grad(set_to_none=True)
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        if error:
            ctx.add(stage="train", implementation=name + label, model=label.strip("@") or None, dtype=dtype,
                    batch=batch, notes=error)
            print(f"[bench] {name}{label}: {error}", flush=True)
            continue
        sec = sum(times)
        peak = pm.added_mb + model_bytes(*models_used) / 2 ** 20
        res[name] = {"tps": toks / sec, "step_s": sec / len(times)}
        ctx.add(stage="train", implementation=name + label, model=label.strip("@") or None,
                params_m=round(shape.n_total / 1e6, 1), dtype=dtype, batch=batch, seq_len_max=seq_max,
                tokens_per_step=round(toks / len(times)), step_ms=1e3 * sec / len(times), tokens_per_s=toks / sec,
                peak_mem_mb=peak, tflops=flops / sec / 1e12, mfu=flops / sec / 1e12 / ctx.peak_tflops,
                loss=statistics.mean(losses),
                notes=_train_note(name, batch, warmup, steps, fused_adamw))
    # side-by-side ratios in our rows
    for ours, theirs in (("ddpo", "trl_dpo"), ("dadpo", "trl_dpo"), ("kd", "trl_kd"), ("sft", None)):
        if ours in res and theirs in res:
            for r in ctx.rows:
                if r["stage"] == "train" and r["implementation"] == ours + label:
                    r["ratio"], r["ratio_of"] = res[ours]["tps"] / res[theirs]["tps"], f"tokens/s over {theirs}"
    # daDPO / dDPO step time, interleaved (ABAB) so load drift hits both alike
    if {"ddpo", "dadpo"} <= set(methods) and ratio_rounds and (budget is None or budget.left() > 20):
        a = make_trainer(student, tokenizer, "ddpo", batch, dev, workdir)
        b = make_trainer(student, tokenizer, "dadpo", batch, dev, workdir)
        if fused_adamw:
            a.opt = make_opt([p for p in student.parameters() if p.requires_grad])
        b.opt = a.opt
        ta, tb = interleaved(a, b, batches, ratio_rounds, dev)
        ratio = statistics.median(y / x for x, y in zip(ta, tb))  # robust to one-off stalls (new shapes)
        res["dadpo_over_ddpo"] = ratio
        ctx.add(stage="train", implementation="dadpo_over_ddpo" + label, model=label.strip("@") or None, dtype=dtype,
                batch=batch, step_ms=1e3 * statistics.mean(tb), ratio=ratio, ratio_of="daDPO step time / dDPO step time",
                notes=f"median of per-round ratios over {ratio_rounds} interleaved rounds (order alternating), same "
                      f"batches, shared AdamW; ratio of summed times {sum(tb) / sum(ta):.4f}; target <= 1.02")
        del a, b
        gc.collect()
    return res


def interleaved(a, b, batches, rounds: int, dev) -> tuple[list, list]:
    """Step times of trainers a and b on the same batches, alternating which goes first (after a warm-up
    round over every batch)."""
    for bb in batches:
        our_step(a, bb)
        our_step(b, bb)
    ta, tb = [], []
    for i in range(rounds):
        bb = batches[i % len(batches)]
        order = (a, b) if i % 2 else (b, a)
        t = {id(x): _timed(lambda x=x: our_step(x, bb), dev)[0] for x in order}
        ta.append(t[id(a)])
        tb.append(t[id(b)])
    return ta, tb


def _train_note(name, batch, warmup, steps, fused) -> str:
    what = {
        "sft": "suite Trainer, SFT on chosen answers",
        "ddpo": "suite Trainer, dDPO (chosen+rejected in one padded forward, response-only LM head)",
        "dadpo": "suite Trainer, daDPO (precomputed pi_ref and pi_te sequence log-probs)",
        "kd": "suite Trainer, KD forward KL from the cached teacher top-64 + tail",
        "trl_dpo": "TRL DPOTrainer.training_step + DataCollatorForPreference, precompute_ref_log_probs=True",
        "trl_kd": "TRL DistillationTrainer loss path (_get_last_hidden_state + _chunked_divergence_loss, beta=0 "
                  "forward KL) with the teacher online; called directly (the trainer itself also generates)",
    }[name]
    return (f"{what}; {batch} examples/step ({'pairs' if name in ('ddpo', 'dadpo', 'trl_dpo') else 'chosen answers'}); "
            f"{warmup} warm-up + {steps} timed steps; step = forward+backward+clip+AdamW"
            + ("(fused)" if fused else "") + "; peak = memory added by the step + resident weights it uses")


def bench_parity(ctx: Ctx, student, tokenizer, exs: list[dict], workdir: Path, label: str = "",
                 teacher=None) -> None:
    """Same batch, same weights, no update: our dDPO loss vs TRL's; our full-vocabulary KD vs TRL's."""
    dev = ctx.dev
    # the teacher's log-probs as the reference: with pi_ref = the student itself every margin is 0 and
    # both losses are log 2 whatever they compute
    exs = [dict(e, ref_chosen=e["te_chosen"], ref_rejected=e["te_rejected"]) for e in exs]
    tr = make_trainer(student, tokenizer, "ddpo", len(exs), dev, workdir)
    with torch.no_grad(), tr.acc.autocast():
        ours = float(tr.loss_sum(exs)[0]) / len(exs)
    try:
        trl_tr = make_trl_dpo(student, tokenizer, dev, workdir)
        theirs = trl_dpo_loss(trl_tr, student, trl_preference_rows(exs), dev)
        ctx.add(stage="parity", implementation="ddpo_vs_trl_dpo" + label, model=label.strip("@") or None,
                batch=len(exs), loss=ours, parity_abs_diff=abs(ours - theirs),
                dtype=str(next(student.parameters()).dtype).replace("torch.", ""),
                notes=f"TRL DPOTrainer.compute_loss = {theirs:.8g} on the same pairs, weights and reference "
                      f"log-probs (the teacher's, so margins are not 0); beta={BETA}")
    except Exception as e:  # TRL missing or broken here
        ctx.add(stage="parity", implementation="ddpo_vs_trl_dpo" + label, loss=ours,
                notes=f"TRL failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}")
    if teacher is not None:
        full, trl, _, n = kd_full_and_trl(student, teacher, exs, tokenizer.pad_token_id, dev)
        ctx.add(stage="parity", implementation="kd_full_vs_trl_kd" + label, model=label.strip("@") or None,
                loss=full, parity_abs_diff=None if trl is None else abs(full - trl),
                notes=f"forward KL over the full vocabulary on {n} response tokens; TRL _chunked_divergence_loss "
                      f"(beta=0) = {trl}")


def bench_score(ctx: Ctx, name: str, model, model_fp: str, exs: list[dict], pad_id: int, prefix: str,
                batch_size: int, topk: int | None = None, vocab: int | None = None) -> None:
    """Time the suite's precomputation (first call, on a fresh cache folder) and attach its results."""
    from dadpo.examples import attach_sequence_scores, attach_teacher_topk
    from dadpo.precompute import sequence_logprobs, teacher_topk

    dev, shape = ctx.dev, shape_of(model)
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, {"DADPO_CACHE": tmp}):
        # warm-up on one full batch of other data (a different cache key): kernel choice, allocator
        warm = [dict(e["chosen"], input_ids=e["chosen"]["input_ids"][:-1], response_mask=e["chosen"]["response_mask"][:-1])
                for e in exs[:batch_size]]
        sequence_logprobs(model, warm, pad_id, model_fp, batch_size, desc="warm-up")
        encs = [e["chosen"] for e in exs] + [e["rejected"] for e in exs]
        with PeakMemory(dev) as pm:
            dt, _ = _timed(lambda: attach_sequence_scores(exs, model, model_fp, pad_id, prefix, batch_size), dev)
        lens, resp = seq_stats(encs)
        fl = model_flops(shape, lens, resp, train=False)
        ctx.add(stage="score", implementation=f"seq_logprobs:{prefix}", model=name,
                params_m=round(shape.n_total / 1e6, 1), dtype=dtype, batch=batch_size, seq_len_max=max(lens),
                tokens_per_step=sum(lens), step_ms=1e3 * dt, tokens_per_s=sum(lens) / dt,
                peak_mem_mb=pm.added_mb + model_bytes(model) / 2 ** 20, tflops=fl / dt / 1e12,
                mfu=fl / dt / 1e12 / ctx.peak_tflops,
                notes=f"dadpo.precompute.sequence_logprobs over {len(encs)} sequences (chosen+rejected), batches "
                      f"sorted by length; step_ms = the whole pass incl. the cache write")
        if topk:
            teacher_topk(model, warm, pad_id, model_fp, topk, batch_size=batch_size, vocab=vocab)
            encs = [e["chosen"] for e in exs]
            with PeakMemory(dev) as pm:
                dt, rep = _timed(lambda: attach_teacher_topk(exs, model, model_fp, pad_id, topk,
                                                              batch_size=batch_size, vocab=vocab), dev)
            lens, resp = seq_stats(encs)
            fl = model_flops(shape, lens, resp, train=False)
            ctx.add(stage="score", implementation=f"teacher_topk:k={topk}", model=name,
                    params_m=round(shape.n_total / 1e6, 1), dtype=dtype, batch=batch_size, seq_len_max=max(lens),
                    tokens_per_step=sum(lens), step_ms=1e3 * dt, tokens_per_s=sum(lens) / dt,
                    peak_mem_mb=pm.added_mb + model_bytes(model) / 2 ** 20, tflops=fl / dt / 1e12,
                    mfu=fl / dt / 1e12 / ctx.peak_tflops, k=topk,
                    bytes_per_token=rep["chosen"]["bytes"] / max(1, rep["chosen"]["tokens"]),
                    notes=f"dadpo.precompute.teacher_topk over {len(encs)} chosen answers"
                          + (f", vocabulary cut to {vocab} rows" if vocab else ""))


def bench_generate(ctx: Ctx, name: str, model, batches=(1, 16, 64), prompt_len: int = 128, new_tokens: int = 64,
                   eos_id: int = 2, pad_id: int = 3, low: int = 10, budget: Budget | None = None) -> None:
    """model.generate with the suite's sampling settings (dadpo.generation), forced to `new_tokens`."""
    dev, shape = ctx.dev, shape_of(model)
    dtype = next(model.parameters()).dtype
    wbytes = decode_weight_bytes(shape, dtype)
    model.eval()
    vocab = min(shape.vocab, model.get_input_embeddings().weight.shape[0])
    g = torch.Generator().manual_seed(0)

    def gen(B, n):
        ids = torch.randint(low, vocab, (B, prompt_len), generator=g).to(dev)
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                              do_sample=True, temperature=0.7, top_p=0.95, top_k=0, eos_token_id=eos_id,
                              pad_token_id=pad_id)

    for B in batches:
        if budget is not None and budget.left() < 15:
            ctx.add(stage="generate", implementation=f"hf_generate:b={B}", model=name, notes="skipped: time budget")
            continue
        torch.manual_seed(0)
        with torch.no_grad(), PeakMemory(dev) as pm:
            gen(B, 2)
            t1, _ = _timed(lambda: gen(B, 1), dev)
            tn, out = _timed(lambda: gen(B, new_tokens), dev)
        assert out.shape[1] == prompt_len + new_tokens
        step = max(tn - t1, 1e-9) / (new_tokens - 1)
        tps = B / step
        floor = B * ctx.bw_gbs * 1e9 / wbytes
        kv = 2 * shape.layers * model.config.num_key_value_heads * (shape.d_att // model.config.num_attention_heads) \
            * torch.tensor([], dtype=dtype).element_size() * B * (prompt_len + new_tokens / 2)
        ctx.add(stage="generate", implementation=f"hf_generate:b={B}", model=name,
                params_m=round(shape.n_total / 1e6, 1), dtype=str(dtype).replace("torch.", ""), batch=B,
                seq_len_max=prompt_len + new_tokens, tokens_per_step=B, step_ms=1e3 * step, tokens_per_s=tps,
                peak_mem_mb=pm.added_mb + model_bytes(model) / 2 ** 20, bw_share=tps / floor,
                notes=f"decoding rate = B x {new_tokens - 1} / (t({new_tokens} new) - t(1 new)); end-to-end "
                      f"{B * new_tokens / tn:.1f} tok/s incl. a {prompt_len}-token prefill; floor = "
                      f"{wbytes / 1e9:.3f} GB weights per step / {ctx.bw_gbs:.0f} GB/s copy = {floor:.0f} tok/s "
                      f"(KV cache adds ~{kv / 1e9:.3f} GB per step, not in the floor); sampling T=0.7, top-p 0.95")


def bench_kd_topk(ctx: Ctx, student, teacher, exs, pad_id, ks=(8, 32, 64, 256), model: str = "") -> None:
    full, trl, res, n = kd_full_and_trl(student, teacher, exs, pad_id, ctx.dev, ks)
    V = student.get_output_embeddings().weight.shape[0]
    ctx.add(stage="kd_topk", implementation="full_vocab", model=model, k=V, bytes_per_token=2 * V, loss=full,
            parity_abs_diff=None if trl is None else abs(full - trl), tokens_per_step=n,
            notes=f"forward KL(teacher || student), mean over {n} response tokens of real teacher answers; full "
                  f"distribution stored as fp16 = 2V bytes; TRL _chunked_divergence_loss(beta=0) = {trl}")
    for k, (lk, nb, l32) in res.items():
        ctx.add(stage="kd_topk", implementation=f"topk:k={k}", model=model, k=k, bytes_per_token=nb, loss=lk,
                kd_rel_err=abs(lk - full) / full, ratio=nb / (2 * V), ratio_of="bytes/token over full fp16",
                tokens_per_step=n,
                notes=f"cache = fp16 log-probs + int32 ids + fp32 tail (6k+4 B); signed error {(lk - full) / full:+.4%}, "
                      f"{(l32 - full) / full:+.4%} with fp32 log-probs (the k+1-bucket divergence is a lower "
                      f"bound; fp16 rounding adds the rest); target |err| <= 1% at k=64")


# ------------------------------------------------------------------------------- cases
def _peaks(dev: torch.device) -> dict:
    if dev.type == "cuda":
        return {"matmul_bf16_tflops": matmul_peak_tflops(dev, torch.bfloat16), "copy_gbs": copy_bandwidth_gbs(dev)}
    return {"matmul_fp32_tflops": matmul_peak_tflops(dev, torch.float32),
            "matmul_bf16_tflops": matmul_peak_tflops(dev, torch.bfloat16), "copy_gbs": copy_bandwidth_gbs(dev)}


def random_model(name: str, dev: torch.device, dtype: torch.dtype, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**QWEN_SHAPES[name], max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                      bos_token_id=None, eos_token_id=2, pad_token_id=3)
    torch.manual_seed(seed)
    with torch.device(dev):
        model = Qwen2ForCausalLM._from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    return model


def run_random(args, dev: torch.device, rows: list, out_csv: Path | None) -> dict:
    """gpu / tiny case: random-weight student and teacher of the named shapes."""
    from dadpo.testing import tiny_tokenizer

    tiny = args.case == "tiny"
    budget = Budget(args.budget_s)
    dtype = torch.bfloat16 if (dev.type == "cuda" or args.dtype == "bfloat16") else torch.float32
    sname, tname = ("tiny-student", "tiny-teacher") if tiny else (args.student, args.teacher)
    t0 = time.perf_counter()
    peaks = _peaks(dev)
    peak = peaks["matmul_bf16_tflops"] if dtype == torch.bfloat16 else peaks["matmul_fp32_tflops"]
    ctx = Ctx(args.case_name or (f"tiny-{dev.type}" if tiny else f"gpu-{sname}"), dev, device_name(dev),
              versions_str(versions()), peak, peaks["copy_gbs"], rows, out_csv)
    tok = tiny_tokenizer()  # ids < 320: valid in every shape; TRL's DPOTrainer needs a tokenizer for its one row
    student = random_model(sname, dev, dtype, seed=0)
    teacher = random_model(tname, dev, dtype, seed=1) if tname else None
    svocab = student.get_output_embeddings().weight.shape[0]
    spec = dict(prompt=(8, 24), chosen=(8, 40), rejected=(8, 40), max_len=64) if tiny else {}
    exs = synthetic_pairs(args.pairs, svocab, seed=0, **spec)
    pad = tok.pad_token_id
    # teacher scoring (these caches are what training reads)
    bench_score(ctx, sname, student, f"rand-{sname}", exs, pad, "ref", args.score_batch)
    if teacher is not None:
        bench_score(ctx, tname, teacher, f"rand-{tname}", exs, pad, "te", args.score_batch, topk=args.topk,
                    vocab=svocab)
    else:
        for e in exs:
            e["te_chosen"], e["te_rejected"] = e["ref_chosen"], e["ref_rejected"]
            e["te_chosen_count"], e["te_rejected_count"] = e["ref_chosen_count"], e["ref_rejected_count"]
    print(f"[bench] scoring done at {time.perf_counter() - t0:.0f}s", flush=True)
    with tempfile.TemporaryDirectory() as wd:
        wd = Path(wd)
        bench_parity(ctx, student, tok, exs[: max(args.batch, 4)], wd, teacher=teacher)
        methods = ("sft", "ddpo", "dadpo") + (("kd", "trl_dpo", "trl_kd") if teacher is not None else ("trl_dpo",))
        bench_train(ctx, student, tok, exs, args.batch, args.warmup, args.steps, wd, methods, teacher=teacher,
                    ratio_rounds=args.ratio_rounds, budget=budget)
        print(f"[bench] training done at {time.perf_counter() - t0:.0f}s", flush=True)
        gen_batches = (1, 4) if tiny else (1, 16, 64)
        gl = dict(prompt_len=8, new_tokens=4) if tiny else dict(prompt_len=args.gen_prompt, new_tokens=args.gen_new)
        bench_generate(ctx, sname, student, gen_batches, budget=budget, **gl)
        if teacher is not None:
            bench_generate(ctx, tname, teacher, gen_batches, budget=budget, **gl)
        print(f"[bench] generation done at {time.perf_counter() - t0:.0f}s", flush=True)
        if teacher is not None and args.train_teacher_shape and budget.left() > 60:
            # the teacher's shape as a student: does a training step fit at all?
            _TRL_DPO.clear()  # its trainer holds the student
            del student
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            for e in exs:  # the frozen scores: any values do for timing
                e["ref_chosen"], e["ref_rejected"] = e["te_chosen"], e["te_rejected"]
            bench_train(ctx, teacher, tok, exs, args.big_batch, 2, max(2, args.steps // 2), wd,
                        ("ddpo", "dadpo", "trl_dpo"), ratio_rounds=0, label=f"@{tname}", fused_adamw=True,
                        budget=budget)
    settings = {k: v for k, v in vars(args).items() if k not in ("merge",)}
    return {ctx.case: {"device": dev.type, "device_name": ctx.dname, "versions": versions(), "git_sha": git_sha(),
                       "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "settings": settings,
                       "measured_peaks": peaks, "student": sname, "teacher": tname, "dtype": str(dtype),
                       "wall_s": round(time.perf_counter() - t0, 1), "loadavg": os.getloadavg(),
                       "formulas": __doc__.split("FLOPs are", 1)[1].strip(),
                       "notes": "random weights of the named shapes; synthetic token ids with varied prompt / "
                                "answer lengths; training steps use lr=1e-9 so all implementations see the same "
                                "weights"}}


def _pruned_student(teacher_dir: str, prompts: list[str]) -> str:
    """An existing 20%-pruned copy of the teacher from the cache, else one made now (~2.5 min on CPU)."""
    from dadpo.cache import cache_root, stable_hash

    root = cache_root() / "pruned"
    for rep in sorted(root.glob("*.report.json")) if root.is_dir() else []:
        with contextlib.suppress(ValueError, KeyError, OSError):
            payload = json.loads(rep.read_text())
            p = payload.get("payload", payload)
            folder = Path(p["out_dir"])
            if Path(p["teacher"]) == Path(teacher_dir) and abs(p["target_share"] - 0.2) < 1e-9 \
                    and (folder / "config.json").is_file():
                return str(folder)
    from dadpo.prune import make_pruned_student

    out = root / f"bench-{stable_hash([teacher_dir, prompts[:4]], 16)}"
    print(f"[bench] no pruned student in the cache: pruning into {out}", flush=True)
    make_pruned_student(teacher_dir, str(out), 0.2, calib_prompts=prompts[:4])
    return str(out)


def run_cpu(args, rows: list, out_csv: Path | None) -> dict:
    """cpu case: SmolLM2-135M-Instruct teacher, its 20%-pruned copy, real ShareGPT prompts."""
    from dadpo.assets import resolve_model
    from dadpo.chat import encode_prompt
    from dadpo.data import load_in_domain
    from dadpo.examples import encode_rows
    from dadpo.generation import Sampling, generate
    from dadpo.modeling import fingerprint, load_model, load_tokenizer

    dev = torch.device("cpu")
    t0 = time.perf_counter()
    peaks = _peaks(dev)
    ctx = Ctx(args.case_name or "cpu-smollm2", dev, device_name(dev), versions_str(versions()),
              peaks["matmul_fp32_tflops"], peaks["copy_gbs"], rows, out_csv)
    tdir = resolve_model("offline:smollm2-135m-instruct")
    tok = load_tokenizer(tdir)
    train, _ = load_in_domain()
    prompts = [p for p in train["prompt"] if len(encode_prompt(tok, p, 10 ** 6)) <= args.cpu_prompt_tokens]
    sdir = _pruned_student(tdir, list(train["prompt"]))
    tfp, sfp = fingerprint(tdir), fingerprint(sdir)
    teacher = load_model(tdir, torch.float32, on=dev).eval()
    student = load_model(sdir, torch.float32, on=dev)
    t16 = load_model(tdir, torch.bfloat16, on=dev).eval()
    s16 = load_model(sdir, torch.bfloat16, on=dev).eval()
    # real pairs: the teacher's answer (chosen) and the pruned student's (rejected); cached by the suite
    n = args.pairs
    samp = Sampling(max_new_tokens=args.cpu_answer_tokens, max_prompt_tokens=args.cpu_prompt_tokens, seed=0)
    chosen, _ = generate(t16, tok, prompts[:n], samp, tfp, batch_size=n, desc="teacher answers")
    rejected, _ = generate(s16, tok, prompts[:n], samp, sfp, batch_size=n, desc="student answers")
    exs = encode_rows(tok, [{"id": str(i), "prompt": p, "chosen": c, "rejected": r}
                            for i, (p, c, r) in enumerate(zip(prompts[:n], chosen, rejected))],
                      args.cpu_prompt_tokens + args.cpu_answer_tokens + 8, args.cpu_prompt_tokens)
    print(f"[bench] data ready at {time.perf_counter() - t0:.0f}s", flush=True)
    pad = tok.pad_token_id
    ctx.peak_tflops = peaks["matmul_bf16_tflops"]  # inference runs in bf16 on CPU (dadpo.modeling.pick_dtype)
    bench_score(ctx, "smollm2-135m-pruned", s16, sfp, exs, pad, "ref", args.score_batch)
    bench_score(ctx, "smollm2-135m", t16, tfp, exs, pad, "te", args.score_batch, topk=args.topk)
    print(f"[bench] scoring done at {time.perf_counter() - t0:.0f}s", flush=True)
    bench_kd_topk(ctx, student, teacher, exs, pad, model="smollm2-135m -> pruned")
    ctx.peak_tflops = peaks["matmul_fp32_tflops"]
    with tempfile.TemporaryDirectory() as wd:
        wd = Path(wd)
        bench_parity(ctx, student, tok, exs[: max(args.batch, 4)], wd)
        bench_train(ctx, student, tok, exs, args.batch, args.warmup, args.steps, wd, teacher=teacher,
                    ratio_rounds=args.ratio_rounds)
    print(f"[bench] training done at {time.perf_counter() - t0:.0f}s", flush=True)
    ctx.peak_tflops = peaks["matmul_bf16_tflops"]
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    bench_generate(ctx, "smollm2-135m", t16, (1, 16, 64), prompt_len=args.cpu_gen_prompt, new_tokens=args.cpu_gen_new,
                   eos_id=eos, pad_id=pad)
    tokens = sum(len(e["chosen"]["input_ids"]) + len(e["rejected"]["input_ids"]) for e in exs)
    settings = {k: v for k, v in vars(args).items() if k not in ("merge",)}
    return {ctx.case: {"device": "cpu", "device_name": ctx.dname, "versions": versions(), "git_sha": git_sha(),
                       "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "settings": settings,
                       "measured_peaks": peaks, "teacher": tdir, "student": sdir, "teacher_fp": tfp, "student_fp": sfp,
                       "pairs": n, "pair_tokens": tokens, "prompts": [e["id"] for e in exs],
                       "wall_s": round(time.perf_counter() - t0, 1), "loadavg": os.getloadavg(),
                       "formulas": __doc__.split("FLOPs are", 1)[1].strip(),
                       "notes": "training fp32 (peak: measured fp32 matmul), scoring and generation bf16 (peak: "
                                "measured bf16 matmul), as the suite picks on CPU; 2 shared cores, loadavg given; "
                                "answers generated with T=0.7, top-p 0.95 and cached by dadpo.generation"}}


def _kernel_summary(prof, top: int = 10) -> tuple[float, dict, list]:
    """(device ms, ms per kernel family, top kernels) of a torch.profiler run."""
    from torch.autograd import DeviceType

    t = lambda e: (getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)) / 1e3  # noqa: E731
    ka = prof.key_averages()
    evs = [e for e in ka if getattr(e, "device_type", None) == DeviceType.CUDA and t(e) > 0]
    if not evs:  # kernels not listed apart: operators' own device time (no double counting)
        evs = [e for e in ka if t(e) > 0]
    fam = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    for e in evs:
        n = e.key.lower()
        k = ("matmul" if any(x in n for x in ("gemm", "xmma", "cutlass", "nvjet", "gemv", "::mm", "addmm", "bmm")) else
             "attention" if any(x in n for x in ("fmha", "attention", "flash", "mem_eff", "scaled_dot")) else "other")
        fam[k] += t(e)
    return sum(fam.values()), fam, [(e.key[:100], t(e), e.count) for e in sorted(evs, key=t, reverse=True)[:top]]


def run_profile(args, dev: torch.device, out_txt: Path, rows: list, out_csv: Path | None) -> dict:
    """Where time goes, by --sections: A LM-head micro-benchmark (ours vs TRL's fused head); B kernel
    families of one dDPO step (ours vs TRL); C GPU busy share of decoding; D daDPO / dDPO step time over
    many interleaved rounds; E scoring passes on new vs already seen batch shapes (rows for D and E)."""
    from dadpo.testing import tiny_tokenizer

    lines: list[str] = []

    def say(x=""):
        print(x, flush=True)
        lines.append(str(x))

    cuda = dev.type == "cuda"
    tiny = not cuda
    dtype = torch.bfloat16 if cuda else torch.float32
    sname = "tiny-student" if tiny else args.student
    student = random_model(sname, dev, dtype)
    tok = tiny_tokenizer()
    V = student.get_output_embeddings().weight.shape[0]
    spec = dict(prompt=(8, 24), chosen=(8, 40), rejected=(8, 40), max_len=64) if tiny else {}
    exs = synthetic_pairs(args.pairs, V, seed=0, **spec)
    g = torch.Generator().manual_seed(1)
    for e in exs:
        for a in ("chosen", "rejected"):
            n = sum(e[a]["response_mask"])
            for pre in ("ref", "te"):
                e[f"{pre}_{a}"], e[f"{pre}_{a}_count"] = float(-2.0 * n * (1 + 0.1 * torch.rand((), generator=g))), n
    B = args.batch
    R = sum(sum(e[a]["response_mask"]) for e in exs[:B] for a in ("chosen", "rejected"))

    sec = args.sections.upper()
    peaks = _peaks(dev)
    ctx = Ctx(args.case_name or f"{'gpu' if cuda else 'tiny-cpu'}-{sname}", dev, device_name(dev), versions_str(versions()),
              peaks["matmul_bf16_tflops"] if cuda else peaks["matmul_fp32_tflops"], peaks["copy_gbs"], rows, out_csv)

    if "E" in sec:  # before anything else has run attention on these shapes
        from dadpo.precompute import sequence_logprobs

        say("== E. scoring passes (dadpo.precompute.sequence_logprobs), fresh cache each")
        shape = shape_of(student)
        with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, {"DADPO_CACHE": tmp}):
            sequence_logprobs(student, [e["chosen"] for e in synthetic_pairs(2, V, seed=9, **spec)], tok.pad_token_id,
                              "warm", 2)
            other = synthetic_pairs(args.pairs, V, seed=5, **spec)
            for label, data, cudnn in (("new shapes", exs, True), ("same shapes again", exs, True),
                                       ("new shapes, cuDNN SDPA off", other, False)):
                encs = [e[a] for e in data for a in ("chosen", "rejected")]
                with contextlib.ExitStack() as st:
                    if cuda and not cudnn:
                        st.callback(torch.backends.cuda.enable_cudnn_sdp, torch.backends.cuda.cudnn_sdp_enabled())
                        torch.backends.cuda.enable_cudnn_sdp(False)
                    dt, _ = _timed(lambda: sequence_logprobs(student, encs, tok.pad_token_id, f"p-{label}",
                                                             args.score_batch), dev)
                lens, resp = seq_stats(encs)
                fl = model_flops(shape, lens, resp, train=False)
                say(f"{label}: {1e3 * dt:.0f} ms, {sum(lens) / dt:.0f} tok/s, MFU {fl / dt / 1e12 / ctx.peak_tflops:.1%}")
                ctx.add(stage="score", implementation=f"seq_logprobs:ref:{label.replace(' ', '_').replace(',', '')}",
                        model=sname, params_m=round(shape.n_total / 1e6, 1), dtype=str(dtype).replace("torch.", ""),
                        batch=args.score_batch, seq_len_max=max(lens), tokens_per_step=sum(lens), step_ms=1e3 * dt,
                        tokens_per_s=sum(lens) / dt, tflops=fl / dt / 1e12, mfu=fl / dt / 1e12 / ctx.peak_tflops,
                        notes=f"profile E: {len(encs)} sequences, batches of {args.score_batch} sorted by length; "
                              f"{label}")

    if "D" in sec:
        say(f"== D. daDPO / dDPO step time, {args.ratio_rounds} interleaved rounds, {B} pairs/step")
        with tempfile.TemporaryDirectory() as wd:
            batches = [exs[i:i + B] for i in range(0, len(exs) - B + 1, B)]
            a = make_trainer(student, tok, "ddpo", B, dev, Path(wd))
            b = make_trainer(student, tok, "dadpo", B, dev, Path(wd))
            b.opt = a.opt
            ta, tb = interleaved(a, b, batches, args.ratio_rounds, dev)
            per = [y / x for x, y in zip(ta, tb)]
            q = statistics.quantiles(per, n=4)
            ratio = statistics.median(per)  # robust to one-off stalls (a batch shape seen for the first time)
            say(f"dDPO {1e3 * statistics.mean(ta):.1f} ms, daDPO {1e3 * statistics.mean(tb):.1f} ms, ratio of sums "
                f"{sum(tb) / sum(ta):.4f}, per-round median {ratio:.4f} (IQR {q[0]:.4f}-{q[2]:.4f})")
            ctx.add(stage="train", implementation="dadpo_over_ddpo", dtype=str(dtype).replace("torch.", ""), batch=B,
                    step_ms=1e3 * statistics.mean(tb), ratio=ratio, ratio_of="daDPO step time / dDPO step time",
                    notes=f"profile D: {args.ratio_rounds} interleaved rounds (order alternating) over {len(batches)} "
                          f"batches, shared AdamW; ratio = per-round median (IQR {q[0]:.4f}-{q[2]:.4f}); ratio of "
                          f"summed times {sum(tb) / sum(ta):.4f}; dDPO {1e3 * statistics.mean(ta):.1f} ms; target <= 1.02")
            del a, b
            gc.collect()

    def bench(fn, n=5, warm=2):
        for _ in range(warm):
            fn()
        ts = [_timed(fn, dev)[0] for _ in range(n)]
        return 1e3 * statistics.median(ts), 1e3 * (max(ts) - min(ts))

    # A. LM head + log-probs on R response positions, forward + backward
    if "A" in sec:
        _profile_head(say, student, dev, dtype, V, R, bench)
    if "B" in sec:
        _profile_steps(say, student, tok, exs, B, dev, cuda, bench)
    if "C" in sec:
        _profile_decode(say, student, dev, cuda, V)
    out_txt.parent.mkdir(parents=True, exist_ok=True)
    out_txt.write_text("\n".join(lines) + "\n")
    return {ctx.case + ":profile": {"device_name": ctx.dname, "versions": versions(), "git_sha": git_sha(),
                                    "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    "sections": sec, "measured_peaks": peaks, "settings": vars(args),
                                    "log": lines}}


def _profile_head(say, student, dev, dtype, V, R, bench):
    from baselines.numerics import hidden_to_token_logprobs

    say(f"== A. LM head log-probs, {R} positions x V={V}, d={student.config.hidden_size}, {dtype} (median ms, spread)")
    W = student.get_output_embeddings().weight.detach().clone().requires_grad_(True)
    h = torch.randn(R, student.config.hidden_size, device=dev, dtype=dtype, requires_grad=True)
    y = torch.randint(0, V, (R,), device=dev)
    for chunk in (1024, 4096):
        def ours(chunk=chunk):
            with _autocast(dev):
                hidden_to_token_logprobs(h[None], W, y[None], chunk)[0].sum().backward()
        with PeakMemory(dev) as pm:
            ms, sp = bench(ours)
        say(f"ours hidden_to_token_logprobs chunk={chunk}: {ms:.2f} ms (spread {sp:.2f}), +{pm.added_mb:.0f} MB")
    with contextlib.suppress(ImportError):
        from trl.kernels import ChunkedLogProbFunction

        def trl_head():
            with _autocast(dev):
                ChunkedLogProbFunction.apply(h, W, None, y, 1.0, 32768, None, 1.0, ("log_probs",))[0].sum().backward()
        with PeakMemory(dev) as pm:
            ms, sp = bench(trl_head)
        say(f"TRL ChunkedLogProbFunction (fused, online logsumexp): {ms:.2f} ms (spread {sp:.2f}), +{pm.added_mb:.0f} MB")
    head_flops = 6 * V * student.config.hidden_size * R
    say(f"head model FLOPs {head_flops / 1e12:.2f} TFLOP (+1/3 for recomputing the logits in backward)")


def _profile_steps(say, student, tok, exs, B, dev, cuda, bench):
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as wd:
        wd = Path(wd)
        batches = [exs[i:i + B] for i in range(0, len(exs) - B + 1, B)]
        steps = {}
        for chunk in (1024, 4096):
            from dadpo.config import ObjectiveConfig, TrainConfig
            from dadpo.methods import build_method
            from dadpo.trainer import Trainer

            cfg = TrainConfig(lr=LR, sft_lr=LR, per_device_batch=B, global_batch=B, logit_chunk=chunk)
            tr = Trainer(student, tok, build_method("ddpo", ObjectiveConfig(beta=BETA)), cfg, wd / f"c{chunk}",
                         cpu=not cuda, mixed_precision="bf16" if cuda else "no")
            steps[f"ours logit_chunk={chunk}"] = (lambda b, tr=tr: our_step(tr, b), tr)
        try:
            trl_tr = make_trl_dpo(student, tok, dev, wd)
            opt = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=0.0)
            steps["TRL DPOTrainer"] = (lambda b: trl_dpo_step(trl_tr, student, trl_preference_rows(b), opt, dev), None)
        except Exception as e:  # noqa: BLE001
            say(f"TRL unavailable: {type(e).__name__}: {e}")
        say(f"== B. dDPO step, {B} pairs/step (median ms over {len(batches)} batches x 2, spread)")
        for name, (fn, _) in steps.items():
            i = iter(range(10 ** 6))
            ms, sp = bench(lambda: fn(batches[next(i) % len(batches)]), n=2 * len(batches), warm=3)
            say(f"{name}: {ms:.1f} ms (spread {sp:.1f})")
        for name, (fn, _) in steps.items():
            if "4096" in name:
                continue
            sync(dev)
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            with profile(activities=acts) as prof:
                t0 = time.perf_counter()
                for b in batches[:2]:
                    fn(b)
                sync(dev)
                wall = 1e3 * (time.perf_counter() - t0) / 2
            busy, fam, top = _kernel_summary(prof)
            say(f"-- {name}: wall {wall:.1f} ms/step (profiled), GPU busy {busy / 2:.1f} ms/step; families "
                + ", ".join(f"{k} {v / 2:.1f}" for k, v in fam.items()))
            for k, ms_, cnt in top:
                say(f"   {ms_ / 2:8.2f} ms/step  x{cnt // 2:<5d} {k}")
        steps.clear()
        _TRL_DPO.clear()
        gc.collect()


def _profile_decode(say, student, dev, cuda, V):
    from torch.profiler import ProfilerActivity, profile

    student.eval()
    say("== C. decoding (hf generate, suite sampling settings)")
    for Bg in (1, 64):
        ids = torch.randint(10, V, (Bg, 128 if cuda else 8), device=dev)
        kw = dict(attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.7, top_p=0.95, top_k=0,
                  eos_token_id=2, pad_token_id=3)
        with torch.no_grad():
            student.generate(input_ids=ids, max_new_tokens=4, min_new_tokens=4, **kw)
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            with profile(activities=acts) as prof:
                t0 = time.perf_counter()
                student.generate(input_ids=ids, max_new_tokens=17, min_new_tokens=17, **kw)
                sync(dev)
                wall = 1e3 * (time.perf_counter() - t0)
        busy, fam, top = _kernel_summary(prof, 6)
        say(f"b={Bg}: 17 new tokens in {wall:.0f} ms wall, GPU busy {busy:.0f} ms ({busy / max(wall, 1e-9):.0%}); "
            + ", ".join(f"{k} {v:.0f}" for k, v in fam.items()))
        for k, ms_, cnt in top:
            say(f"   {ms_:8.2f} ms  x{cnt:<6d} {k}")


def print_table(rows: list[dict]) -> None:
    cols = ["stage", "implementation", "model", "batch", "step_ms", "tokens_per_s", "peak_mem_mb", "mfu", "bw_share",
            "ratio", "loss", "parity_abs_diff", "k", "bytes_per_token", "kd_rel_err"]
    print("\t".join(cols))
    for r in rows:
        print("\t".join(_fmt(r.get(c)) if not isinstance(r.get(c), float) else f"{r[c]:.4g}" for c in cols))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", choices=("auto", "cpu", "gpu", "tiny", "profile"), default="auto",
                    help="auto: gpu with CUDA, else cpu; profile: where a dDPO step and decoding spend time")
    ap.add_argument("--case-name", default=None, help="row label (default cpu-smollm2 / gpu-<student> / tiny-<dev>)")
    ap.add_argument("--out", default=None, help="CSV to merge rows into (default results/perf.csv; tiny: runs/)")
    ap.add_argument("--provenance", default=None, help="JSON beside it (default: the CSV's stem + .provenance.json)")
    ap.add_argument("--merge", nargs="+", metavar="FILE", help="only merge these CSV [+ provenance JSON] into --out")
    ap.add_argument("--student", default="qwen2.5-1.5b", choices=sorted(QWEN_SHAPES))
    ap.add_argument("--teacher", default="qwen2.5-7b", choices=sorted(QWEN_SHAPES))
    ap.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"), help="tiny case only")
    ap.add_argument("--pairs", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None, help="examples (pairs) per step")
    ap.add_argument("--big-batch", type=int, default=1, help="pairs per step for the teacher-shape training")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--ratio-rounds", type=int, default=None)
    ap.add_argument("--score-batch", type=int, default=None)
    ap.add_argument("--topk", type=int, default=64)
    ap.add_argument("--gen-prompt", type=int, default=128)
    ap.add_argument("--gen-new", type=int, default=64)
    ap.add_argument("--cpu-prompt-tokens", type=int, default=40)
    ap.add_argument("--cpu-answer-tokens", type=int, default=40)
    ap.add_argument("--cpu-gen-prompt", type=int, default=8)
    ap.add_argument("--cpu-gen-new", type=int, default=8)
    ap.add_argument("--train-teacher-shape", action=argparse.BooleanOptionalAction, default=True,
                    help="also try a training step with the teacher's shape as the student (gpu/tiny)")
    ap.add_argument("--sections", default="ABC", help="profile case: any of A B C D E (see run_profile)")
    ap.add_argument("--budget-s", type=float, default=1e9, help="skip later stages past this many seconds")
    args = ap.parse_args(argv)
    if args.case == "auto":
        args.case = "gpu" if torch.cuda.is_available() else "cpu"
    defaults = {"cpu": dict(pairs=8, batch=1, warmup=1, steps=2, ratio_rounds=2, score_batch=8),
                "gpu": dict(pairs=32, batch=8, warmup=3, steps=8, ratio_rounds=6, score_batch=16),
                "tiny": dict(pairs=8, batch=2, warmup=1, steps=2, ratio_rounds=2, score_batch=4),
                "profile": dict(pairs=16, batch=8, warmup=3, steps=8, ratio_rounds=24, score_batch=16)}[args.case]
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    default_out = ROOT / ("runs/bench-tiny/perf.csv" if args.case == "tiny" else "results/perf.csv")
    out = Path(args.out) if args.out else default_out
    prov = Path(args.provenance) if args.provenance else out.with_suffix(".provenance.json")
    if args.merge:
        rows = read_csv(Path(args.merge[0]))
        extra = json.loads(Path(args.merge[1]).read_text()) if len(args.merge) > 1 else {}
        merge_into(out, prov, rows, extra)
        print(f"merged {len(rows)} rows into {out}")
        return 0
    if args.case == "profile":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if dev.type == "cpu":
            args.pairs, args.batch = 4, 2
        rows: list[dict] = []
        facts = run_profile(args, dev, out.with_name("profile.txt"), rows, out.with_name(out.stem + ".partial.csv"))
        if rows:
            merge_into(out, prov, rows, facts)
            out.with_name(out.stem + ".partial.csv").unlink(missing_ok=True)
        return 0
    rows: list[dict] = []
    partial = out.with_name(out.stem + ".partial.csv")
    if args.case == "cpu":
        facts = run_cpu(args, rows, partial)
    else:
        dev = torch.device("cuda" if args.case == "gpu" else ("cuda" if torch.cuda.is_available() else "cpu"))
        if args.case == "gpu" and not torch.cuda.is_available():
            raise SystemExit("bench: --case gpu needs CUDA")
        facts = run_random(args, dev, rows, partial)
    merge_into(out, prov, rows, facts)
    partial.unlink(missing_ok=True)
    print_table(rows)
    print(f"wrote {len(rows)} rows into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
