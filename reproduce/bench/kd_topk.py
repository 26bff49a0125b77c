"""KD stage: how much the top-k teacher cache costs in KD-loss error, and KD loss parity with TRL.

The forward KL(teacher || student) over the full vocabulary on the chosen answers' response tokens
(baselines.kd.kd_loss), TRL's forward KL on the same logits (GKDTrainer.generalized_jsd_loss,
beta=0), and ours again from a top-k + tail cache stored as dadpo.precompute.teacher_topk stores it:
format 1 (k log-probs + one merged tail bucket, a lower bound) and format 2, the default (the same plus
`samples` ids drawn from the teacher's tail, importance-weighted: an unbiased estimate).
"""
from __future__ import annotations

import torch

from reproduce.bench.measure import autocast
from reproduce.bench.rows import Sink


def kd_full_and_trl(student, teacher, exs: list[dict], pad_id: int, dev: torch.device, ks=(), batch: int = 4,
                    samples: int = 64, seed: int = 0):
    """(full-vocabulary loss, TRL's or None if TRL is missing, {k: (loss from the format-1 cache, its bytes
    per token, loss from an fp32 format-1 cache, loss from the format-2 cache with `samples` tail samples,
    its bytes per token)}, response tokens)."""
    from baselines.kd import kd_loss
    from baselines.numerics import topk_with_samples
    from dadpo.chat import pad_batch
    from dadpo.scoring import response_hidden

    hs, ht = [], []
    with torch.no_grad(), autocast(dev):
        for i in range(0, len(exs), batch):
            b = {k: v.to(dev) for k, v in pad_batch([e["chosen"] for e in exs[i:i + batch]], pad_id).items()}
            hs.append(response_hidden(student, b["input_ids"], b["attention_mask"], b["response_mask"])[0])
            ht.append(response_hidden(teacher, b["input_ids"], b["attention_mask"], b["response_mask"])[0])
        hs, ht = torch.cat(hs), torch.cat(ht)
        V = student.get_output_embeddings().weight.shape[0]
        # the teacher's padded embedding rows beyond the student's vocabulary are cut, as the cache cuts them
        s_logits = student.get_output_embeddings()(hs).float()
        t_logits = teacher.get_output_embeddings()(ht)[:, :V].float()
    mask = torch.ones(1, hs.shape[0], device=dev)
    full = float(kd_loss(s_logits[None], mask, "forward_kl", teacher_logits=t_logits[None])[0])
    try:
        from reproduce.bench.trl_adapters import trl_forward_kl

        trl = trl_forward_kl(s_logits, t_logits)
    except ImportError:
        trl = None
    out = {}
    for k in ks:
        top = topk_with_samples(t_logits, k, samples, generator=torch.Generator(device=dev).manual_seed(seed))
        lp, ids, tail = top[:3]
        # dadpo.precompute.teacher_topk's storage
        cache = (lp.half(), ids.int(), tail.float(), top.sample_logprobs.half(), top.sample_ids.int())
        nbytes = [sum(t.element_size() * t[0].numel() for t in cache[:n]) for n in (3, 5)]
        read = [t.float()[None] if t.is_floating_point() else t.long()[None] for t in cache]
        lk = kd_loss(s_logits[None], mask, "forward_kl", teacher_topk=read[:3])[0]
        l32 = kd_loss(s_logits[None], mask, "forward_kl", teacher_topk=(lp[None], ids[None], tail[None]))[0]
        ls = kd_loss(s_logits[None], mask, "forward_kl", teacher_topk=read)[0]
        out[k] = (float(lk), nbytes[0], float(l32), float(ls), nbytes[1])
    return full, trl, out, int(hs.shape[0])


def bench_kd_topk(sink: Sink, student, teacher, exs: list[dict], pad_id: int, ks=(8, 32, 64, 256),
                  model: str = "", samples: int = 64) -> None:
    full, trl, res, n = kd_full_and_trl(student, teacher, exs, pad_id, sink.dev, ks, samples=samples)
    V = student.get_output_embeddings().weight.shape[0]
    sink.add(stage="kd_topk", implementation="full_vocab", model=model, k=V, bytes_per_token=2 * V, loss=full,
             parity_abs_diff=None if trl is None else abs(full - trl), tokens_per_step=n,
             notes=f"forward KL(teacher || student), mean over {n} response tokens of real teacher answers; full "
                   f"distribution stored as fp16 = 2V bytes; TRL GKDTrainer.generalized_jsd_loss(beta=0) = {trl}")
    for k, (lk, nb, l32, ls, nbs) in res.items():
        sink.add(stage="kd_topk", implementation=f"topk:k={k}", model=model, k=k, bytes_per_token=nb, loss=lk,
                 kd_rel_err=abs(lk - full) / full, ratio=nb / (2 * V), ratio_of="bytes/token over full fp16",
                 tokens_per_step=n,
                 notes=f"format 1: fp16 log-probs + int32 ids + fp32 tail (6k+4 B); signed error {(lk - full) / full:+.4%}, "
                       f"{(l32 - full) / full:+.4%} with fp32 log-probs (the k+1-bucket divergence is a lower "
                       f"bound; fp16 rounding adds the rest)")
        if samples:
            sink.add(stage="kd_topk", implementation=f"topk:k={k}+{samples}", model=model, k=k, bytes_per_token=nbs,
                     loss=ls, kd_rel_err=abs(ls - full) / full, ratio=nbs / (2 * V),
                     ratio_of="bytes/token over full fp16", tokens_per_step=n,
                     notes=f"format 2 (the default cache): format 1 + {samples} ids sampled from the teacher's tail "
                           f"(fp16 log-prob + int32 id each, 6k+4+6m B), importance-weighted, seed 0; signed error "
                           f"{(ls - full) / full:+.4%}; target |err| <= 1% at <= 2% of full storage")


def bench_kd_parity(sink: Sink, student, teacher, exs: list[dict], pad_id: int, label: str = "") -> None:
    full, trl, _, n = kd_full_and_trl(student, teacher, exs, pad_id, sink.dev)
    sink.add(stage="parity", implementation="kd_full_vs_trl_kd" + label, model=label.strip("@") or None, loss=full,
             parity_abs_diff=None if trl is None else abs(full - trl),
             notes=f"forward KL over the full vocabulary on {n} response tokens; TRL "
                   f"GKDTrainer.generalized_jsd_loss(beta=0) = {trl}")
