"""Score stage: the suite's precomputation with frozen models (dadpo.precompute), timed, and its
results attached to the examples (the train stage reads them)."""
from __future__ import annotations

from reproduce.bench.flops import model_flops, seq_stats, shape_of
from reproduce.bench.measure import PeakMemory, dtype_name, model_bytes, timed
from reproduce.bench.rows import Sink


def attach_scores(sink: Sink | None, name: str, model, exs: list[dict], pad_id: int, prefix: str, batch_size: int,
                  topk: int | None = None, vocab: int | None = None) -> None:
    """Sequence log-probs of both answers under `model` as `{prefix}_chosen` etc. (and, with `topk`,
    its top-k cache of the chosen answers as `kd`); a row per pass unless `sink` is None."""
    from dadpo.examples import answers_of, attach_sequence_scores, attach_teacher_topk
    from dadpo.precompute import sequence_logprobs, teacher_topk

    encs, chosen = answers_of(exs), [e["chosen"] for e in exs]
    if sink is None:
        attach_sequence_scores(exs, sequence_logprobs(model, encs, pad_id, batch_size), prefix)
        if topk:
            attach_teacher_topk(exs, teacher_topk(model, chosen, pad_id, topk, batch_size=batch_size, vocab=vocab))
        return
    dev, shape = sink.dev, shape_of(model)
    # warm-up on one full batch of other data: kernel choice, allocator
    warm = [dict(e, input_ids=e["input_ids"][:-1], response_mask=e["response_mask"][:-1]) for e in chosen[:batch_size]]
    sequence_logprobs(model, warm, pad_id, batch_size, desc="warm-up")

    def row(implementation, dt, pm, encs, **extra):
        lens, resp = seq_stats(encs)
        tflops = model_flops(shape, lens, resp, train=False) / dt / 1e12
        sink.add(stage="score", implementation=implementation, model=name, params_m=round(shape.n_total / 1e6, 1),
                 dtype=dtype_name(model), batch=batch_size, seq_len_max=max(lens), tokens_per_step=sum(lens),
                 step_ms=1e3 * dt, tokens_per_s=sum(lens) / dt, tflops=tflops, mfu=tflops / sink.peak_tflops,
                 peak_mem_mb=pm.added_mb + model_bytes(model) / 2 ** 20, **extra)

    with PeakMemory(dev) as pm:
        dt, scores = timed(lambda: sequence_logprobs(model, encs, pad_id, batch_size), dev)
    attach_sequence_scores(exs, scores, prefix)
    row(f"seq_logprobs:{prefix}", dt, pm, encs,
        notes=f"dadpo.precompute.sequence_logprobs over {len(encs)} sequences (chosen+rejected), batches sorted "
              f"by length; step_ms = the whole pass")
    if topk:
        teacher_topk(model, warm, pad_id, topk, batch_size=batch_size, vocab=vocab)
        with PeakMemory(dev) as pm:
            dt, cache = timed(lambda: teacher_topk(model, chosen, pad_id, topk, batch_size=batch_size, vocab=vocab),
                              dev)
        size = attach_teacher_topk(exs, cache)
        row(f"teacher_topk:k={topk}", dt, pm, chosen, k=topk, bytes_per_token=size["bytes"] / max(1, size["tokens"]),
            notes=f"dadpo.precompute.teacher_topk over {len(chosen)} chosen answers"
                  + (f", vocabulary cut to {vocab} rows" if vocab else ""))


def copy_scores(exs: list[dict], src: str, dst: str) -> None:
    """Use the `src` scores as `dst` (e.g. no teacher: pi_te = pi_ref), counts included."""
    for e in exs:
        for a in ("chosen", "rejected"):
            e[f"{dst}_{a}"], e[f"{dst}_{a}_count"] = e[f"{src}_{a}"], e[f"{src}_{a}_count"]
