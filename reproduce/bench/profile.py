"""Where the time goes (`--case profile`), by section:
  A  LM head + log-probs on the response positions of one batch, forward + backward: ours
     (hidden_to_token_logprobs, two chunk sizes) against TRL's fused ChunkedLogProbFunction
  B  one dDPO step: ours (two logit chunk sizes) against TRL's DPOTrainer, then the kernel families
     of each under torch.profiler
  C  decoding: how busy the device is inside model.generate
  D  daDPO / dDPO step time over many interleaved rounds (a row)
  E  scoring passes on new batch shapes, the same shapes again, and new shapes with cuDNN SDPA off (rows)
On a CPU it runs the tiny shapes (a dry run of the code path).
"""
from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch

from reproduce.bench.cases import TINY_LENGTHS, new_sink, random_model, run_facts, synthetic_pairs
from reproduce.bench.flops import counted_flops, model_flops, seq_stats, shape_of
from reproduce.bench.measure import PeakMemory, autocast, dtype_name, sync, timed
from reproduce.bench.rows import Sink
from reproduce.bench.train import Ours, bench_train, make_trainer
from reproduce.bench.trl_adapters import TrlDPO

SECTIONS = "ABCDE"


def kernel_summary(prof, top: int = 10) -> tuple[float, dict, list]:
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


def _bench(fn, dev, n=5, warm=2) -> tuple[float, float]:
    """(median ms, spread ms) of n timed calls after `warm` untimed ones."""
    for _ in range(warm):
        fn()
    ts = [timed(fn, dev)[0] for _ in range(n)]
    return 1e3 * statistics.median(ts), 1e3 * (max(ts) - min(ts))


def _profiled(fn, dev, reps: int):
    """(wall ms per call, profiler) of `reps` calls of fn under torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    sync(dev)
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for i in range(reps):
            fn(i)
        sync(dev)
    return 1e3 * (time.perf_counter() - t0) / reps, prof


def section_head(say, student, dev, R: int) -> None:
    from baselines.numerics import hidden_to_token_logprobs

    V, d, dtype = student.get_output_embeddings().weight.shape[0], student.config.hidden_size, dtype_name(student)
    say(f"== A. LM head log-probs, {R} positions x V={V}, d={d}, {dtype} (median ms, spread)")
    W = student.get_output_embeddings().weight.detach().clone().requires_grad_(True)
    h = torch.randn(R, d, device=dev, dtype=W.dtype, requires_grad=True)
    y = torch.randint(0, V, (R,), device=dev)
    heads = {f"ours hidden_to_token_logprobs chunk={c}":
             lambda c=c: hidden_to_token_logprobs(h[None], W, y[None], c)[0].sum().backward() for c in (1024, 4096)}
    with contextlib.suppress(ImportError):
        from trl.kernels import ChunkedLogProbFunction

        heads["TRL ChunkedLogProbFunction (fused, online logsumexp)"] = lambda: ChunkedLogProbFunction.apply(
            h, W, None, y, 1.0, 32768, None, 1.0, ("log_probs",))[0].sum().backward()
    for name, fn in heads.items():
        def run(fn=fn):
            with autocast(dev):
                fn()
        with PeakMemory(dev) as pm:
            ms, spread = _bench(run, dev)
        say(f"{name}: {ms:.2f} ms (spread {spread:.2f}), +{pm.added_mb:.0f} MB, "
            f"{counted_flops(run) / 1e12:.3f} TFLOP counted")
    say(f"head model FLOPs {6 * V * d * R / 1e12:.3f} TFLOP (counted = this + the logits recomputed in backward)")


def section_steps(say, student, tok, exs, B, dev, wd: Path) -> None:
    batches = [exs[i:i + B] for i in range(0, len(exs) - B + 1, B)]
    steps = {f"ours logit_chunk={c}": Ours(make_trainer(student, tok, "ddpo", B, dev, wd / f"c{c}", logit_chunk=c))
             for c in (1024, 4096)}
    try:
        steps["TRL DPOTrainer"] = TrlDPO(student, tok, dev, wd, 0.1, 1e-9)
    except Exception as e:  # noqa: BLE001
        say(f"TRL unavailable: {type(e).__name__}: {e}")
    say(f"== B. dDPO step, {B} pairs/step (median ms over {len(batches)} batches x 2, spread)")
    for name, s in steps.items():
        i = iter(range(10 ** 6))
        ms, spread = _bench(lambda: s.step(batches[next(i) % len(batches)]), dev, n=2 * len(batches), warm=3)
        say(f"{name}: {ms:.1f} ms (spread {spread:.1f})")
    for name, s in steps.items():
        if "4096" in name:
            continue
        wall, prof = _profiled(lambda i: s.step(batches[i % len(batches)]), dev, 2)
        busy, fam, top = kernel_summary(prof)
        say(f"-- {name}: wall {wall:.1f} ms/step (profiled), device busy {busy / 2:.1f} ms/step; families "
            + ", ".join(f"{k} {v / 2:.1f}" for k, v in fam.items()))
        for k, ms_, cnt in top:
            say(f"   {ms_ / 2:8.2f} ms/step  x{cnt // 2:<5d} {k}")
    for s in steps.values():
        s.release()


def section_decode(say, student, dev, V: int) -> None:
    student.eval()
    say("== C. decoding (hf generate, suite sampling settings)")
    for Bg in (1, 64):
        ids = torch.randint(10, V, (Bg, 128 if dev.type == "cuda" else 8), device=dev)
        kw = dict(attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.7, top_p=0.95, top_k=0,
                  eos_token_id=2, pad_token_id=3)
        with torch.no_grad():
            student.generate(input_ids=ids, max_new_tokens=4, min_new_tokens=4, **kw)
            wall, prof = _profiled(lambda i: student.generate(input_ids=ids, max_new_tokens=17, min_new_tokens=17,
                                                              **kw), dev, 1)
        busy, fam, top = kernel_summary(prof, 6)
        say(f"b={Bg}: 17 new tokens in {wall:.0f} ms wall, device busy {busy:.0f} ms ({busy / max(wall, 1e-9):.0%}); "
            + ", ".join(f"{k} {v:.0f}" for k, v in fam.items()))
        for k, ms_, cnt in top:
            say(f"   {ms_:8.2f} ms  x{cnt:<6d} {k}")


def section_scoring(say, sink: Sink, name: str, student, tok, exs, other, batch: int) -> None:
    from dadpo.precompute import sequence_logprobs

    dev, shape = sink.dev, shape_of(student)
    say("== E. scoring passes (dadpo.precompute.sequence_logprobs)")
    sequence_logprobs(student, [e["chosen"] for e in other[:2]], tok.pad_token_id, 2, desc="warm")
    for label, data, cudnn in (("new shapes", exs, True), ("same shapes again", exs, True),
                               ("new shapes, cuDNN SDPA off", other, False)):
        encs = [e[a] for e in data for a in ("chosen", "rejected")]
        with contextlib.ExitStack() as st:
            if dev.type == "cuda" and not cudnn:
                st.callback(torch.backends.cuda.enable_cudnn_sdp, torch.backends.cuda.cudnn_sdp_enabled())
                torch.backends.cuda.enable_cudnn_sdp(False)
            dt, _ = timed(lambda: sequence_logprobs(student, encs, tok.pad_token_id, batch, desc=label), dev)
        lens, resp = seq_stats(encs)
        tflops = model_flops(shape, lens, resp, train=False) / dt / 1e12
        say(f"{label}: {1e3 * dt:.0f} ms, {sum(lens) / dt:.0f} tok/s, MFU {tflops / sink.peak_tflops:.1%}")
        sink.add(stage="score", implementation=f"seq_logprobs:ref:{label.replace(' ', '_').replace(',', '')}",
                 model=name, params_m=round(shape.n_total / 1e6, 1), dtype=dtype_name(student),
                 batch=batch, seq_len_max=max(lens), tokens_per_step=sum(lens), step_ms=1e3 * dt,
                 tokens_per_s=sum(lens) / dt, tflops=tflops, mfu=tflops / sink.peak_tflops,
                 notes=f"profile E: {len(encs)} sequences, batches of {batch} sorted by length; {label}")


def section_ratio(say, sink: Sink, student, tok, exs, args, wd: Path) -> None:
    say(f"== D. daDPO / dDPO step time, {args.steps} interleaved rounds, {args.batch} pairs/step")
    scratch = Sink(sink.case, sink.dev, sink.device_name, sink.versions, sink.peak_tflops, sink.bw_gbs)
    bench_train(scratch, student, tok, exs, args.batch, args.warmup, args.steps, wd, ("ddpo", "dadpo"))
    row = scratch.find("train", "dadpo_over_ddpo")
    if row is not None:
        say(f"ratio {row['ratio']:.4f}; {row['notes']}")
        sink.add(**{**row, "notes": "profile D: " + row["notes"]})


def run_profile(args, out_txt: Path, partial_csv: Path | None) -> tuple[list[dict], dict]:
    from dadpo.testing import tiny_tokenizer

    lines: list[str] = []

    def say(x=""):
        print(x, flush=True)
        lines.append(str(x))

    t0 = time.perf_counter()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = dev.type == "cuda"
    if not cuda:  # a dry run on tiny shapes
        args.pairs, args.batch, args.warmup, args.steps = 4, 2, 1, 2
    sname = args.student if cuda else "tiny-student"
    sink, peaks = new_sink(args.case_name or f"{'gpu' if cuda else 'tiny-cpu'}-{sname}", dev, partial_csv)
    dtype = torch.bfloat16 if cuda else torch.float32
    if not cuda:
        sink.peak_tflops = peaks["matmul_fp32_tflops"]
    student = random_model(sname, dev, dtype)
    tok = tiny_tokenizer()
    V = student.get_output_embeddings().weight.shape[0]
    spec = {} if cuda else TINY_LENGTHS
    exs, other = synthetic_pairs(args.pairs, V, seed=0, **spec), synthetic_pairs(args.pairs, V, seed=5, **spec)
    g = torch.Generator().manual_seed(1)
    for e in exs:  # frozen scores near the policy's: any values do for timing
        for a in ("chosen", "rejected"):
            n = sum(e[a]["response_mask"])
            for pre in ("ref", "te"):
                e[f"{pre}_{a}"], e[f"{pre}_{a}_count"] = float(-2.0 * n * (1 + 0.1 * torch.rand((), generator=g))), n
    R = sum(sum(e[a]["response_mask"]) for e in exs[:args.batch] for a in ("chosen", "rejected"))
    sec = args.sections.upper()
    with tempfile.TemporaryDirectory() as wd:
        if "E" in sec:  # before anything else has run attention on these shapes
            section_scoring(say, sink, sname, student, tok, exs, other, args.score_batch)
        if "D" in sec:
            section_ratio(say, sink, student, tok, exs, args, Path(wd))
        if "A" in sec:
            section_head(say, student, dev, R)
        if "B" in sec:
            section_steps(say, student, tok, exs, args.batch, dev, Path(wd))
        if "C" in sec:
            section_decode(say, student, dev, V)
    out_txt.parent.mkdir(parents=True, exist_ok=True)
    out_txt.write_text("\n".join(lines) + "\n")
    facts = run_facts(args, sink, peaks, t0, sections=sec, log=lines)
    return sink.rows, {sink.case + ":profile": facts[sink.case]}
