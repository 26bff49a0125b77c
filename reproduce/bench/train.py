"""Train stage: one optimizer step (forward, backward, clip, AdamW) of every implementation on the
same batches, and the dDPO loss parity with TRL.

The suite's methods run through the public `dadpo.trainer.Trainer.step`, TRL's through
trl_adapters. Steps use lr=1e-9: each does all the work of a real update but leaves the shared
weights, and so the other implementations' losses, in place. Implementations are timed in
interleaved rounds (each round one step of each on the same batch, the order rotating), so load
drift on a shared machine hits all alike; figures are medians over rounds, ratios medians of
per-round ratios.

`ddpo` / `dadpo` run the trainer's defaults (rows packed without padding, the LM head that train.lm_head
"auto" resolves to here); `ddpo_padded` / `dadpo_padded` the path before packing and the head choice
(right-padded rows, the chunked head), on the same batches, so the speed-up is measured in one process.
Each row's notes name the packing and head it ran with.
"""
from __future__ import annotations

import gc
import statistics
from pathlib import Path

import torch

from reproduce.bench.flops import model_flops, seq_stats, shape_of
from reproduce.bench.measure import Budget, PeakMemory, dtype_name, model_bytes, timed
from reproduce.bench.rows import Sink
from reproduce.bench.trl_adapters import TrlDPO, TrlKD

LR = 1e-9
BETA = 0.1
PAIRED = ("ddpo", "dadpo", "trl_dpo", "ddpo_padded", "dadpo_padded")  # (chosen, rejected) pairs; others chosen only
RATIOS = (("ddpo", "trl_dpo"), ("dadpo", "trl_dpo"), ("kd", "trl_kd"), ("ddpo_padded", "trl_dpo"),
          ("dadpo_padded", "trl_dpo"))
SPEEDUPS = (("ddpo", "ddpo_padded"), ("dadpo", "dadpo_padded"))  # the new path over the old, per round
PADDED = dict(packing=False, lm_head="chunked")  # the trainer's path before packing and the head choice
WHAT = {
    "sft": "suite Trainer.step, SFT on chosen answers",
    "ddpo": "suite Trainer.step, dDPO (chosen+rejected in one forward, response-only LM head)",
    "dadpo": "suite Trainer.step, daDPO (precomputed pi_ref and pi_te sequence log-probs)",
    "ddpo_padded": "suite Trainer.step, dDPO on the pre-packing path (right-padded rows, chunked head)",
    "dadpo_padded": "suite Trainer.step, daDPO on the pre-packing path (right-padded rows, chunked head)",
    "kd": "suite Trainer.step, KD forward KL from the cached teacher top-64 + tail",
    "trl_dpo": "TRL DPOTrainer: its collator + compute_loss (fused LM head), backward, clip, its optimizer; "
               "precompute_ref_log_probs=True",
    "trl_kd": "TRL experimental GKDTrainer compute_loss (lmbda=0: data set completions, beta=0: forward KL, "
              "teacher online, full-vocabulary logits), backward, clip, its optimizer",
}


def make_trainer(model, tokenizer, method: str, batch: int, dev: torch.device, workdir: Path, **train):
    from dadpo.config import ObjectiveConfig, TrainConfig
    from dadpo.methods import build_method
    from dadpo.trainer import Trainer

    cfg = TrainConfig(lr=LR, sft_lr=LR, per_device_batch=batch, global_batch=batch, max_len=4096, **train)
    method_obj = build_method(method, ObjectiveConfig(beta=BETA, beta1=BETA, beta2=BETA))
    return Trainer(model, tokenizer, method_obj, cfg, Path(workdir) / method, cpu=dev.type == "cpu",
                   mixed_precision="bf16" if dev.type == "cuda" else "no")


class Ours:
    """The suite's training step: Trainer.step on one global batch."""

    def __init__(self, trainer):
        self.trainer = trainer

    def step(self, exs: list[dict]) -> float:
        return self.trainer.step(exs)["loss"]

    def describe(self) -> str:
        tr = self.trainer
        return f"packing={'on' if tr.cfg.packing else 'off (padded)'}, lm_head={tr.head}"

    def release(self) -> None:
        self.trainer = None


def make_stepper(name: str, student, teacher, tokenizer, batch: int, dev: torch.device, workdir: Path):
    if name == "trl_dpo":
        return TrlDPO(student, tokenizer, dev, workdir, BETA, LR)
    if name == "trl_kd":
        return TrlKD(student, teacher, tokenizer, dev, workdir, LR)
    if name.endswith("_padded"):
        return Ours(make_trainer(student, tokenizer, name[:-len("_padded")], batch, dev, Path(workdir) / name, **PADDED))
    return Ours(make_trainer(student, tokenizer, name, batch, dev, workdir))


def _error(e: Exception) -> str:
    return f"failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"


def _free(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def bench_train(sink: Sink, student, tokenizer, exs: list[dict], batch: int, warmup: int, rounds: int,
                workdir: Path, methods=("sft", "ddpo", "dadpo", "kd", "ddpo_padded", "dadpo_padded", "trl_dpo", "trl_kd"),
                teacher=None,
                label: str = "", interleave: bool = True, budget: Budget | None = None) -> dict:
    """Rows for each implementation in `methods` (+ `label`), their ratios and daDPO / dDPO; returns
    {name: {"tokens_per_s": median, "round_s": step seconds per round (None: no step)}} for provenance."""
    dev = sink.dev
    batches = [exs[i:i + batch] for i in range(0, len(exs) - batch + 1, batch)][:max(1, rounds)]
    shape, tshape = shape_of(student), (shape_of(teacher) if teacher is not None else None)
    student.train()
    live, peak_mb, errors, described = {}, {}, {}, {}
    timings: dict = {n: [] for n in methods}  # per round: (seconds, tokens, flops, loss) or None

    def start(name):
        try:
            with PeakMemory(dev) as pm:
                s = make_stepper(name, student, teacher, tokenizer, batch, dev, workdir)
                for i in range(warmup):
                    s.step(batches[i % len(batches)])
            live[name] = s
            described[name] = s.describe() if hasattr(s, "describe") else ""
            peak_mb[name] = pm.added_mb + model_bytes(student, *([teacher] if name == "trl_kd" else [])) / 2 ** 20
        except Exception as e:  # OOM, TRL missing or refusing: a row that says so, then the next one
            errors[name] = _error(e)
            print(f"[bench] {name}{label}: {errors[name]}", flush=True)

    def run(name, b):
        encs = [e["chosen"] for e in b] + ([e["rejected"] for e in b] if name in PAIRED else [])
        lens, resp = seq_stats(encs)
        try:
            dt, loss = timed(lambda: live[name].step(b), dev)
        except Exception as e:  # noqa: BLE001
            errors[name] = _error(e)
            stop(name)
            return None
        fl = model_flops(shape, lens, resp, train=True)
        if name == "trl_kd":  # the online teacher's forward is part of its step
            fl += model_flops(tshape, lens, resp, train=False)
        return dt, sum(lens), fl, loss

    def stop(name):
        if name in live:
            live.pop(name).release()
        student.zero_grad(set_to_none=True)
        _free(dev)

    def out_of_time():
        return budget is not None and budget.left() < 20

    # TRL's DPO and SFT-based (GKD) trainers both patch the model's forward with TRL's fused LM head, each
    # asking for the outputs it needs; the last patch serves every call, so DPO's is made last
    order = sorted(methods, key=lambda n: n == "trl_dpo")
    if interleave:
        for name in order:
            if not out_of_time():
                start(name)
        for i in range(rounds):
            if out_of_time():
                break
            rot = order[i % len(order):] + order[:i % len(order)]
            for name in rot:
                timings[name].append(run(name, batches[i % len(batches)]) if name in live else None)
        for name in order:
            stop(name)
    else:
        for name in order:
            if out_of_time():
                continue
            start(name)
            for i in range(rounds):
                timings[name].append(run(name, batches[i % len(batches)]) if name in live else None)
            stop(name)

    seq_max = max(len(e[a]["input_ids"]) for b in batches for e in b for a in ("chosen", "rejected"))
    common = dict(stage="train", model=label.strip("@") or None, dtype=dtype_name(student), batch=batch)
    tps, out = {}, {}
    for name in methods:
        done = [t for t in timings[name] if t is not None]
        if not done:
            sink.add(implementation=name + label, **common,
                     notes=errors.get(name, "skipped: time budget"))
            continue
        tps[name] = statistics.median(tok / dt for dt, tok, _, _ in done)
        out[name + label] = {"tokens_per_s": tps[name], "round_s": [t and round(t[0], 4) for t in timings[name]]}
        tflops = statistics.median(fl / dt for dt, _, fl, _ in done) / 1e12
        how = ("interleaved with the other implementations, order rotating" if interleave else "in a row")
        sink.add(implementation=name + label, **common, params_m=round(shape.n_total / 1e6, 1), seq_len_max=seq_max,
                 tokens_per_step=round(statistics.mean(tok for _, tok, _, _ in done)),
                 step_ms=1e3 * statistics.median(dt for dt, _, _, _ in done), tokens_per_s=tps[name],
                 peak_mem_mb=peak_mb[name], tflops=tflops, mfu=tflops / sink.peak_tflops,
                 loss=statistics.mean(loss for _, _, _, loss in done),
                 notes=f"{WHAT[name]}" + (f" [{described[name]}]" if described.get(name) else "") +
                       f"; {batch} {'pairs' if name in PAIRED else 'chosen answers'}/step; {warmup} "
                       f"warm-up + {len(done)} timed steps ({how}); medians over timed steps; step = forward+"
                       f"backward+clip+AdamW; peak = memory added by building and warming it up + resident weights "
                       f"it uses" + (f"; {errors[name]}" if name in errors else ""))
    for ours, theirs in RATIOS:
        per = _per_round(timings, ours, theirs, lambda a, b: (a[1] / a[0]) / (b[1] / b[0]))
        row = sink.find("train", ours + label)
        if per and row is not None:
            row["ratio"], row["ratio_of"] = statistics.median(per), f"tokens/s over {theirs} (median per round)"
    for new, old in SPEEDUPS:
        per = _per_round(timings, new, old, lambda a, b: b[0] / a[0])  # same batch: a time ratio is a tokens/s ratio
        if per:
            sink.add(implementation=f"{new}_over_{old}" + label, **common, ratio=statistics.median(per),
                     ratio_of=f"tokens/s of {new} [{described.get(new)}] over {old} [{described.get(old)}]",
                     notes=f"median of per-round ratios over {len(per)} rounds on the same batches")
    per = _per_round(timings, "dadpo", "ddpo", lambda a, b: a[0] / b[0])
    if per and interleave:
        a = [t[0] for t in timings["dadpo"] if t]
        b = [t[0] for t in timings["ddpo"] if t]
        q = statistics.quantiles(per, n=4) if len(per) > 1 else [per[0]] * 3
        sink.add(implementation="dadpo_over_ddpo" + label, **common, step_ms=1e3 * statistics.median(a),
                 ratio=statistics.median(per), ratio_of="daDPO step time / dDPO step time",
                 notes=f"median of per-round ratios over {len(per)} rounds on the same batches (IQR {q[0]:.4f}-"
                       f"{q[2]:.4f}); ratio of summed times {sum(a) / sum(b):.4f}; dDPO median "
                       f"{1e3 * statistics.median(b):.1f} ms; target <= 1.02")
    return out


def _per_round(timings: dict, a: str, b: str, f) -> list[float]:
    return [f(x, y) for x, y in zip(timings.get(a, []), timings.get(b, [])) if x and y]


def bench_parity(sink: Sink, student, tokenizer, exs: list[dict], workdir: Path, label: str = "") -> None:
    """Same batch, same weights, no update: our dDPO loss against TRL DPOTrainer's."""
    # the teacher's log-probs as the reference: with pi_ref = the student itself every margin is 0 and
    # both losses are log 2 whatever they compute
    exs = [dict(e, ref_chosen=e["te_chosen"], ref_rejected=e["te_rejected"]) for e in exs]
    tr = make_trainer(student, tokenizer, "ddpo", len(exs), sink.dev, workdir)
    with torch.no_grad(), tr.acc.autocast():
        ours = float(tr.loss_sum(exs)[0]) / len(exs)
    common = dict(stage="parity", implementation="ddpo_vs_trl_dpo" + label, model=label.strip("@") or None,
                  batch=len(exs), dtype=dtype_name(student), loss=ours)
    try:
        trl = TrlDPO(student, tokenizer, sink.dev, workdir, BETA, LR)
        theirs = trl.loss(exs)
        trl.release()
        sink.add(**common, parity_abs_diff=abs(ours - theirs),
                 notes=f"TRL DPOTrainer.compute_loss = {theirs:.8g} on the same pairs, weights and reference "
                       f"log-probs (the teacher's, so margins are not 0); beta={BETA}")
    except Exception as e:  # TRL missing or broken here
        sink.add(**common, notes=f"TRL {_error(e)}")
    del tr
    _free(sink.dev)
