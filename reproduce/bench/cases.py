"""The benchmark's cases, their models and data:
  cpu   SmolLM2-135M-Instruct teacher and its 20%-pruned copy on real ShareGPT prompts with their own
        answers (fp32 training, bf16 inference, as the suite picks on CPU);
  gpu   random-weight Qwen2.5-1.5B student and Qwen2.5-7B teacher shapes, bf16, synthetic token ids;
  tiny  the gpu code path on tiny shapes (a dry run).
"""
from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path

import torch

from reproduce.bench.flops import FORMULAS
from reproduce.bench.generation import bench_generate
from reproduce.bench.kd_topk import bench_kd_parity, bench_kd_topk
from reproduce.bench.measure import Budget, device_name, loadavg, measured_peaks
from reproduce.bench.rows import Sink, versions_str
from reproduce.bench.score import attach_scores, copy_scores
from reproduce.bench.train import bench_parity, bench_train
from reproduce.provenance import device_facts, git_sha, relative, versions

QWEN_SHAPES = {  # Qwen2.5 configs (config.json of the hub repos); random weights
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "tiny-student": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True),
    "tiny-teacher": dict(hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=520, tie_word_embeddings=False),
}
TINY_LENGTHS = dict(prompt=(8, 24), chosen=(8, 40), rejected=(8, 40), max_len=64)
CPU_PROMPT_TOKENS = CPU_ANSWER_TOKENS = 40
# per case: pairs, pairs per step, warm-up steps per implementation, timed rounds, scoring batch,
# generation prompt and new tokens
DEFAULTS = {"cpu": dict(pairs=8, batch=1, warmup=1, steps=6, score_batch=8, gen_prompt=8, gen_new=8),
            "gpu": dict(pairs=32, batch=8, warmup=4, steps=8, score_batch=16, gen_prompt=128, gen_new=64),
            "tiny": dict(pairs=8, batch=2, warmup=1, steps=2, score_batch=4, gen_prompt=8, gen_new=4),
            "profile": dict(pairs=16, batch=8, warmup=4, steps=24, score_batch=16, gen_prompt=128, gen_new=17)}


def random_model(name: str, dev: torch.device, dtype: torch.dtype, seed: int = 0):
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(**QWEN_SHAPES[name], max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                      bos_token_id=None, eos_token_id=2, pad_token_id=3)
    torch.manual_seed(seed)
    with torch.device(dev):
        return AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")


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


def new_sink(case: str, dev: torch.device, partial_csv: Path | None) -> tuple[Sink, dict]:
    peaks = measured_peaks(dev)
    return Sink(case, dev, device_name(dev), versions_str(versions()), peaks["matmul_bf16_tflops"], peaks["copy_gbs"],
                partial_csv), peaks


def run_facts(args, sink: Sink, peaks: dict, t0: float, **extra) -> dict:
    """The provenance entry of one case's run."""
    utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    sha, load = git_sha(), loadavg()
    return {sink.case: {"device": sink.dev.type, "device_name": sink.device_name, "versions": versions(),
                        "device_facts": device_facts(), "git_sha": sha, "utc": utc, "measured_peaks": peaks,
                        "settings": {k: v for k, v in vars(args).items() if k not in ("merge", "out", "provenance")},
                        "wall_s": round(time.perf_counter() - t0, 1), "loadavg": load, "formulas": FORMULAS,
                        "stage_runs": {s: {"utc": utc, "git_sha": sha, "loadavg": load, "versions": versions()}
                                       for s in args.stages},
                        **extra}}


def pruned_student(teacher_dir: str, prompts: list[str]) -> str:
    """A 20%-pruned copy of the teacher from the cache (any earlier one of the same teacher), else one
    made now (~2.5 min on CPU)."""
    from dadpo.cache import Cache, read_json
    from dadpo.prune import make_pruned_student, report_path

    cache = Cache.default()
    root = cache.root / "pruned"
    for rep in sorted(root.glob("*.report.json")) if root.is_dir() else []:
        p = read_json(rep) or {}
        folder = Path(str(p.get("out_dir", "")))
        if Path(str(p.get("teacher"))) == Path(teacher_dir) and abs(p.get("target_share", 0) - 0.2) < 1e-9 \
                and (folder / "config.json").is_file():
            return str(folder)
    out = cache.path("pruned", {"bench": teacher_dir, "calib": prompts[:4]})
    print(f"[bench] no pruned student in the cache: pruning into {out}", flush=True)
    with cache.lock(out):
        if not report_path(out).is_file():
            make_pruned_student(teacher_dir, str(out), 0.2, calib_prompts=prompts[:4])
    return str(out)


def run_cpu(args, partial_csv: Path | None) -> tuple[list[dict], dict]:
    """cpu case: SmolLM2-135M-Instruct teacher, its 20%-pruned copy, real ShareGPT prompts."""
    from dadpo.assets import resolve_model
    from dadpo.cache import Cache
    from dadpo.chat import encode_prompt
    from dadpo.data import load_in_domain
    from dadpo.examples import encode_rows
    from dadpo.generation import Sampling, generate
    from dadpo.modeling import fingerprint, load_model, load_tokenizer

    dev, t0, stages = torch.device("cpu"), time.perf_counter(), set(args.stages)
    sink, peaks = new_sink(args.case_name or "cpu-smollm2", dev, partial_csv)
    tdir = resolve_model("offline:smollm2-135m-instruct")
    tok = load_tokenizer(tdir)
    train, _ = load_in_domain()
    prompts = [p for p in train["prompt"] if len(encode_prompt(tok, p, 10 ** 6)) <= CPU_PROMPT_TOKENS]
    sdir = pruned_student(tdir, list(train["prompt"]))
    tfp, sfp = fingerprint(tdir), fingerprint(sdir)
    teacher = load_model(tdir, torch.float32, on=dev).eval()
    student = load_model(sdir, torch.float32, on=dev)
    t16 = load_model(tdir, torch.bfloat16, on=dev).eval()
    s16 = load_model(sdir, torch.bfloat16, on=dev).eval()
    # real pairs: the teacher's answer (chosen) and the pruned student's (rejected); cached by the suite
    n, cache = args.pairs, Cache.default()
    samp = Sampling(max_new_tokens=CPU_ANSWER_TOKENS, max_prompt_tokens=CPU_PROMPT_TOKENS, seed=0)
    chosen, _ = generate(t16, tok, prompts[:n], samp, tfp, cache=cache, batch_size=n, desc="teacher answers")
    rejected, _ = generate(s16, tok, prompts[:n], samp, sfp, cache=cache, batch_size=n, desc="student answers")
    exs = encode_rows(tok, [{"id": str(i), "prompt": p, "chosen": c, "rejected": r}
                            for i, (p, c, r) in enumerate(zip(prompts[:n], chosen, rejected))],
                      CPU_PROMPT_TOKENS + CPU_ANSWER_TOKENS + 8, CPU_PROMPT_TOKENS)
    print(f"[bench] data ready at {time.perf_counter() - t0:.0f}s", flush=True)
    pad, timed_scores = tok.pad_token_id, sink if "score" in stages else None
    attach_scores(timed_scores, "smollm2-135m-pruned", s16, exs, pad, "ref", args.score_batch)
    attach_scores(timed_scores, "smollm2-135m", t16, exs, pad, "te", args.score_batch, topk=args.topk)
    if "kd_topk" in stages:
        bench_kd_topk(sink, student, teacher, exs, pad, model="smollm2-135m -> pruned")
    del s16  # the bf16 copies are for inference; training holds one AdamW state per implementation
    if "generate" not in stages:
        del t16
    gc.collect()
    sink.peak_tflops = peaks["matmul_fp32_tflops"]  # training runs in fp32 on CPU
    with tempfile.TemporaryDirectory() as wd:
        if "parity" in stages:
            bench_parity(sink, student, tok, exs[: max(args.batch, 4)], Path(wd))
        rounds = bench_train(sink, student, tok, exs, args.batch, args.warmup, args.steps, Path(wd),
                             teacher=teacher) if "train" in stages else {}
    sink.peak_tflops = peaks["matmul_bf16_tflops"]
    if "generate" in stages:
        bench_generate(sink, "smollm2-135m", t16, (1, 16, 64), args.gen_prompt, args.gen_new,
                       eos_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_id=pad)
    tokens = sum(len(e["chosen"]["input_ids"]) + len(e["rejected"]["input_ids"]) for e in exs)
    return sink.rows, run_facts(
        args, sink, peaks, t0, teacher=relative(tdir), student=relative(sdir), teacher_fp=tfp, student_fp=sfp,
        pairs=n, pair_tokens=tokens, prompts=[e["id"] for e in exs], train_rounds=rounds,
        notes="training fp32 (peak: measured fp32 matmul), scoring and generation bf16 (peak: measured bf16 "
              "matmul), as the suite picks on CPU; shared cores, loadavg given; answers generated with T=0.7, "
              "top-p 0.95 and cached by dadpo.generation")


def run_random(args, partial_csv: Path | None) -> tuple[list[dict], dict]:
    """gpu / tiny case: random-weight student and teacher of the named shapes."""
    from dadpo.testing import tiny_tokenizer

    tiny, stages, t0 = args.case == "tiny", set(args.stages), time.perf_counter()
    if args.case == "gpu" and not torch.cuda.is_available():
        raise SystemExit("bench: --case gpu needs CUDA")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    sname, tname = ("tiny-student", "tiny-teacher") if tiny else (args.student, args.teacher)
    sink, peaks = new_sink(args.case_name or (f"tiny-{dev.type}" if tiny else f"gpu-{sname}"), dev, partial_csv)
    if dtype == torch.float32:
        sink.peak_tflops = peaks["matmul_fp32_tflops"]
    budget = Budget(args.budget_s)
    tok = tiny_tokenizer()  # ids < 320: valid in every shape; TRL's trainers need a tokenizer
    student, teacher = random_model(sname, dev, dtype, seed=0), random_model(tname, dev, dtype, seed=1)
    svocab = student.get_output_embeddings().weight.shape[0]
    exs = synthetic_pairs(args.pairs, svocab, seed=0, **(TINY_LENGTHS if tiny else {}))
    pad, timed_scores = tok.pad_token_id, sink if "score" in stages else None
    attach_scores(timed_scores, sname, student, exs, pad, "ref", args.score_batch)
    attach_scores(timed_scores, tname, teacher, exs, pad, "te", args.score_batch, topk=args.topk, vocab=svocab)
    print(f"[bench] scoring done at {time.perf_counter() - t0:.0f}s", flush=True)
    if "parity" in stages:
        with tempfile.TemporaryDirectory() as wd:
            bench_parity(sink, student, tok, exs[: max(args.batch, 4)], Path(wd))
        bench_kd_parity(sink, student, teacher, exs[: max(args.batch, 4)], pad)
    if "generate" in stages:
        for name, model in ((sname, student), (tname, teacher)):
            bench_generate(sink, name, model, (1, 4) if tiny else (1, 16, 64), args.gen_prompt, args.gen_new,
                           budget=budget)
        print(f"[bench] generation done at {time.perf_counter() - t0:.0f}s", flush=True)
    rounds = {}
    if "train" in stages:
        if teacher.config.vocab_size != svocab:  # TRL's GKDTrainer needs equal vocabulary sizes
            teacher.resize_token_embeddings(svocab)  # the padded rows beyond the student's: the KD cache cuts them too
        with tempfile.TemporaryDirectory() as wd:
            rounds = bench_train(sink, student, tok, exs, args.batch, args.warmup, args.steps, Path(wd),
                                 teacher=teacher, budget=budget)
            print(f"[bench] training done at {time.perf_counter() - t0:.0f}s", flush=True)
            if args.train_teacher_shape and budget.left() > 60:
                # the teacher's shape (full vocabulary again) as a student: does a training step fit at all?
                del student, teacher
                gc.collect()
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                big = random_model(tname, dev, dtype, seed=1)
                copy_scores(exs, "te", "ref")  # frozen scores: any values do for timing
                rounds |= bench_train(sink, big, tok, exs, args.big_batch, 2, max(2, args.steps // 2), Path(wd),
                                      ("ddpo", "dadpo", "trl_dpo"), label=f"@{tname}", interleave=False,
                                      budget=budget)
    return sink.rows, run_facts(
        args, sink, peaks, t0, student=sname, teacher=tname, dtype=str(dtype), train_rounds=rounds,
        notes="random weights of the named shapes; synthetic token ids with varied prompt / answer lengths; "
              "training steps use lr=1e-9 so all implementations see the same weights; for the train stage the "
              "teacher's padded vocabulary rows beyond the student's are cut (TRL's GKDTrainer needs equal sizes)")
