"""KD divergences against brute-force float64 sums; top-k + tail cache against the full vocabulary."""
import math

import pytest
import torch

from baselines.kd import DIVERGENCES, divergence_from_logprobs, kd_loss
from baselines.numerics import topk_with_tail


def _softmax(row, t):
    z = [x / t for x in row]
    mx = max(z)
    e = [math.exp(x - mx) for x in z]
    s = sum(e)
    return [x / s for x in e]


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def _brute(p, q, divergence, lam, alpha):
    """Textbook definitions with explicit sums (p = teacher, q = student)."""
    if divergence == "forward_kl":
        return _kl(p, q)
    if divergence == "reverse_kl":
        return _kl(q, p)
    if divergence == "jsd":
        m = [lam * a + (1 - lam) * b for a, b in zip(p, q)]
        return lam * _kl(p, m) + (1 - lam) * _kl(q, m)
    if divergence == "skew_kl":
        return _kl(p, [alpha * a + (1 - alpha) * b for a, b in zip(p, q)])
    if divergence == "skew_reverse_kl":
        return _kl(q, [alpha * b + (1 - alpha) * a for a, b in zip(p, q)])
    raise AssertionError(divergence)


def _data(B=2, T=5, V=9, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    s = scale * torch.randn(B, T, V, generator=g, dtype=torch.float64)
    t = scale * torch.randn(B, T, V, generator=g, dtype=torch.float64)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, :2] = False  # prompt
    mask[1, -1] = False  # padding
    return s, t, mask


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_full_vocab_matches_brute_force(divergence, temperature):
    s, t, mask = _data()
    s[~mask] = 1e6  # garbage at masked positions must not leak
    lam, alpha = 0.3, 0.2
    loss, metrics = kd_loss(s, mask, divergence, temperature, lam, alpha, teacher_logits=t, chunk_size=3)
    vals = [_brute(_softmax(t[b, i].tolist(), temperature), _softmax(s[b, i].tolist(), temperature),
                   divergence, lam, alpha)
            for b in range(s.shape[0]) for i in range(s.shape[1]) if mask[b, i]]
    assert abs(loss.item() - sum(vals) / len(vals)) < 1e-12
    assert metrics["kd/tokens"].item() == mask.sum().item()
    assert metrics["loss"].item() == loss.item() and not metrics["loss"].requires_grad
    # every divergence is >= 0 per token: the project's loss on each single-token mask, not the reference
    for b, i in mask.nonzero().tolist():
        one = torch.zeros_like(mask)
        one[b, i] = True
        assert kd_loss(s, one, divergence, temperature, lam, alpha, teacher_logits=t)[0].item() >= -1e-12


def test_limits_and_special_cases():
    s, t, _ = _data(seed=1)
    lp, lq = torch.log_softmax(t, -1), torch.log_softmax(s, -1)
    d = lambda name, **kw: divergence_from_logprobs(lp, lq, name, **kw)  # noqa: E731
    for lam in (0.0, 1.0):  # m = q at lam = 0 and m = p at lam = 1: JSD vanishes
        assert torch.all(d("jsd", lam=lam) == 0)
    assert torch.all(d("jsd", lam=1e-4) < 1e-3) and torch.all(d("jsd", lam=1 - 1e-4) < 1e-3)  # continuity
    # lam = 0.5 is symmetric in (p, q)
    torch.testing.assert_close(d("jsd", lam=0.5), divergence_from_logprobs(lq, lp, "jsd", lam=0.5))
    torch.testing.assert_close(d("skew_kl", alpha=0.0), d("forward_kl"), rtol=0, atol=0)
    torch.testing.assert_close(d("skew_reverse_kl", alpha=0.0), d("reverse_kl"), rtol=0, atol=0)
    torch.testing.assert_close(d("skew_kl", alpha=1e-12), d("forward_kl"), rtol=1e-6, atol=1e-9)  # continuity
    assert torch.all(d("skew_kl", alpha=1.0) == 0) and torch.all(d("skew_reverse_kl", alpha=1.0) == 0)
    # skewing toward p can only shrink the divergence
    assert torch.all(d("skew_kl", alpha=0.5) <= d("forward_kl"))
    for name in DIVERGENCES:  # D(p, p) = 0
        assert divergence_from_logprobs(lp, lp, name, lam=0.3, alpha=0.2).abs().max() < 1e-12


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_topk_exact_at_full_vocab(divergence):
    s, t, mask = _data(seed=2)
    V = s.shape[-1]
    s.requires_grad_(True)
    full, _ = kd_loss(s, mask, divergence, 1.5, 0.3, 0.2, teacher_logits=t)
    (g_full,) = torch.autograd.grad(full, s)
    top = topk_with_tail(t, V, temperature=1.5)
    cached, m = kd_loss(s, mask, divergence, 1.5, 0.3, 0.2, teacher_topk=top, chunk_size=4)
    (g_cached,) = torch.autograd.grad(cached, s)
    assert abs(full.item() - cached.item()) < 1e-12
    torch.testing.assert_close(g_cached, g_full, rtol=0, atol=1e-12)
    assert m["kd/teacher_tail_mass"].item() == 0


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_topk_matches_bucketed_brute_force(divergence):
    """Cached mode = the divergence over k + 1 buckets (top-k ids of the teacher, then the rest)."""
    s, t, mask = _data(seed=3)
    k = 3
    top = topk_with_tail(t, k)
    loss, _ = kd_loss(s, mask, divergence, 1.0, 0.3, 0.2, teacher_topk=top)
    vals = []
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if not mask[b, i]:
                continue
            p, q = _softmax(t[b, i].tolist(), 1.0), _softmax(s[b, i].tolist(), 1.0)
            ids = top.ids[b, i].tolist()
            pb = [p[j] for j in ids] + [sum(p[j] for j in range(len(p)) if j not in ids)]
            qb = [q[j] for j in ids] + [sum(q[j] for j in range(len(q)) if j not in ids)]
            vals.append(_brute(pb, qb, divergence, 0.3, 0.2))
    assert abs(loss.item() - sum(vals) / len(vals)) < 1e-12


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_topk_error_decreases_with_k(divergence):
    """Bucketing is a coarsening, so (data processing inequality) the cached value grows with k
    toward the full value: the error never increases, and on a peaked teacher it is small early."""
    g = torch.Generator().manual_seed(5)
    V = 200
    t = torch.randn(2, 6, V, generator=g, dtype=torch.float64) * 1.0
    t[..., :5] += torch.tensor([9.0, 7.0, 6.0, 5.0, 4.0], dtype=torch.float64)  # peaked teacher
    s = t + 1.5 * torch.randn(2, 6, V, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 6, dtype=torch.bool)
    full = kd_loss(s, mask, divergence, 1.0, 0.5, 0.1, teacher_logits=t)[0].item()
    ks = [1, 2, 4, 8, 16, 32, 64, 128, V]
    errs = [abs(full - kd_loss(s, mask, divergence, 1.0, 0.5, 0.1, teacher_topk=topk_with_tail(t, k))[0].item())
            / full for k in ks]
    assert all(b <= a + 1e-12 for a, b in zip(errs, errs[1:])), errs
    assert errs[0] > errs[3] > errs[5]  # strictly better over the useful range
    assert errs[-1] < 1e-12


def test_chunking_checkpoint_and_masking_invariance():
    s, t, mask = _data(B=3, T=7, V=13, seed=6)
    top = topk_with_tail(t, 4)
    ref_vals = None
    for chunk in (1, 5, 1000):
        for kw in ({"teacher_logits": t}, {"teacher_topk": top}):
            x = s.clone().requires_grad_(True)
            loss, _ = kd_loss(x, mask, "jsd", 1.0, 0.4, 0.1, chunk_size=chunk, **kw)
            (grad,) = torch.autograd.grad(loss, x)
            assert grad[~mask].abs().max() == 0
            with torch.no_grad():  # the no-grad (non-checkpointed) path agrees
                assert abs(kd_loss(x, mask, "jsd", 1.0, 0.4, 0.1, chunk_size=chunk, **kw)[0].item()
                           - loss.item()) < 1e-14
            key = "full" if "teacher_logits" in kw else "top"
            ref_vals = ref_vals or {}
            if key in ref_vals:
                assert abs(ref_vals[key][0] - loss.item()) < 1e-13
                torch.testing.assert_close(grad, ref_vals[key][1], rtol=0, atol=1e-14)
            else:
                ref_vals[key] = (loss.item(), grad)
    # sliced (non-contiguous) logits, as in logits[:, :-1]
    loss_sl, _ = kd_loss(s[:, :-1], mask[:, 1:], teacher_logits=t[:, :-1])
    loss_ct, _ = kd_loss(s[:, :-1].contiguous(), mask[:, 1:], teacher_logits=t[:, :-1].contiguous())
    assert loss_sl.item() == loss_ct.item()


def test_gradient_matches_autograd_of_brute_force():
    """d/d student logits of the chunked loss == autograd through a plain full-softmax formula."""
    s, t, mask = _data(seed=7)
    x = s.clone().requires_grad_(True)
    loss, _ = kd_loss(x, mask, "skew_reverse_kl", 1.0, 0.5, 0.3, teacher_logits=t, chunk_size=2)
    (g,) = torch.autograd.grad(loss, x)
    y = s.clone().requires_grad_(True)
    p, q = torch.softmax(t, -1), torch.softmax(y, -1)
    mix = 0.3 * q + 0.7 * p
    per = (q * (q.log() - mix.log())).sum(-1)
    ref = per[mask].mean()
    (g_ref,) = torch.autograd.grad(ref, y)
    assert abs(loss.item() - ref.item()) < 1e-12
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)


def test_bf16_student_and_edge_cases():
    s, t, mask = _data(V=50, seed=8)
    top = topk_with_tail(t.float(), 8)
    xb = s.bfloat16().requires_grad_(True)
    loss, _ = kd_loss(xb, mask, teacher_topk=(top.logprobs.bfloat16(), top.ids, top.tail.bfloat16()))
    ref, _ = kd_loss(s.bfloat16().double(), mask, teacher_topk=top)
    assert loss.dtype == torch.float32 and abs(loss.item() - ref.item()) < 2e-2 * max(1.0, ref.item())
    loss.backward()
    assert torch.isfinite(xb.grad.float()).all()
    # empty mask: zero loss that still backpropagates
    x = s.clone().requires_grad_(True)
    empty, m = kd_loss(x, torch.zeros_like(mask), teacher_logits=t)
    empty.backward()
    assert empty.item() == 0 and m["kd/tokens"].item() == 0 and x.grad.abs().max() == 0
    # explicit denominator (global token count under gradient accumulation)
    l1, _ = kd_loss(s, mask, teacher_logits=t)
    l2, _ = kd_loss(s, mask, teacher_logits=t, num_tokens=2 * mask.sum().item())
    assert abs(l2.item() - l1.item() / 2) < 1e-14
    with pytest.raises(ValueError):
        kd_loss(s, mask)
    with pytest.raises(ValueError):
        kd_loss(s, mask, teacher_logits=t, teacher_topk=top)
    with pytest.raises(ValueError):
        kd_loss(s, mask, divergence="tv", teacher_logits=t)
    with pytest.raises(ValueError, match="vocabulary"):
        kd_loss(s, mask, teacher_logits=torch.cat([t, t[..., :2]], -1))


def test_kd_keeps_no_vocab_sized_tensors_for_backward():
    B, T, V = 2, 32, 3000
    s = torch.randn(B, T, V).bfloat16().requires_grad_(True)
    t = torch.randn(B, T, V).bfloat16()
    mask = torch.ones(B, T, dtype=torch.bool)
    top = topk_with_tail(t, 16)
    own = {x.untyped_storage().data_ptr() for x in (s, t, mask, *top)}
    seen = {}

    def pack(x):
        if x.untyped_storage().data_ptr() not in own:
            seen[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return x

    for kw in ({"teacher_logits": t}, {"teacher_topk": top}):
        seen.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            loss, _ = kd_loss(s, mask, "jsd", chunk_size=16, **kw)
        assert sum(seen.values()) < B * T * V  # chunks are recomputed in backward, not stored
        loss.backward()
        assert torch.isfinite(s.grad.float()).all()


def _peaked(V=3000, T=128, seed=11):
    g = torch.Generator().manual_seed(seed)
    t = 2.0 * torch.randn(1, T, V, generator=g, dtype=torch.float64)
    t[..., :20] += torch.linspace(8.0, 3.0, 20, dtype=torch.float64)  # a peaked head, a long tail
    s = t + 1.0 * torch.randn(1, T, V, generator=g, dtype=torch.float64)
    return s, t, torch.ones(1, T, dtype=torch.bool)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_tail_samples_estimate_is_unbiased(divergence):
    """Mean over sampling seeds of the k + samples cache loss == the full-vocabulary loss, while the
    k + 1-bucket cache stays below it (a lower bound)."""
    from baselines.numerics import topk_with_samples

    s, t, mask = _peaked(V=400, T=6)
    full = kd_loss(s, mask, divergence, teacher_logits=t)[0].item()
    est = [kd_loss(s, mask, divergence, teacher_topk=topk_with_samples(
        t, 4, 8, generator=torch.Generator().manual_seed(seed)))[0].item() for seed in range(300)]
    mean = sum(est) / len(est)
    sem = (sum((x - mean) ** 2 for x in est) / (len(est) - 1) / len(est)) ** 0.5
    assert abs(mean - full) < 4 * sem + 1e-9 * full, (mean, full, sem)
    bucket = kd_loss(s, mask, divergence, teacher_topk=topk_with_tail(t, 4))[0].item()
    assert bucket < full and abs(mean - full) < (full - bucket) / 5


def test_tail_samples_error_at_k64_is_below_one_percent():
    from baselines.numerics import topk_with_samples

    s, t, mask = _peaked()
    full = kd_loss(s, mask, teacher_logits=t)[0].item()
    cache = topk_with_samples(t, 64, 64, generator=torch.Generator().manual_seed(0))
    sampled = kd_loss(s, mask, teacher_topk=cache)[0].item()
    bucket = kd_loss(s, mask, teacher_topk=cache[:3])[0].item()
    assert abs(sampled - full) / full < 0.01
    assert abs(bucket - full) / full > 3 * abs(sampled - full) / full  # the samples are what closes the gap
    # samples carry no weight where the tail is empty (k = V): exact
    V = t.shape[-1]
    exact = kd_loss(s, mask, teacher_topk=topk_with_samples(t, V, 8))[0].item()
    assert abs(exact - full) < 1e-9 * full
    with pytest.raises(ValueError, match="sample"):
        kd_loss(s, mask, teacher_topk=(*cache[:3], cache[3][..., :2], cache[4]))


def test_training_on_a_sampled_cache_lowers_the_cached_loss(tok, tmp_path):
    """The trainer reads the format-2 cache (tail samples) and its KD loss falls over a few steps."""
    from dadpo.config import ObjectiveConfig, TrainConfig
    from dadpo.examples import encode_rows
    from dadpo.methods import build_method
    from dadpo.testing import attach_topk, tiny_llama
    from dadpo.trainer import Trainer

    rows = [{"id": str(i), "prompt": p, "chosen": c} for i, (p, c) in enumerate(
        [("Hi", "Hello, how are you today?"), ("Capital?", "Paris is the capital."),
         ("Poem", "The sea and the sky."), ("Sleep", "Routine, darkness, less caffeine.")])]
    ex = encode_rows(tok, rows, max_len=64, max_prompt_tokens=32)
    attach_topk(ex, tiny_llama(tok, seed=7, layers=2), tok.pad_token_id, k=8, samples=8)
    assert len(ex[0]["kd"]) == 5 and ex[0]["kd"][4].shape[-1] == 8
    cfg = TrainConfig(per_device_batch=4, global_batch=4, lr=3e-3, epochs=6, warmup_ratio=0.0)
    method = build_method("kd", ObjectiveConfig(top_k=8, kd_tail_samples=8))
    assert method.settings["kd_tail_samples"] == 8
    losses = [r["loss"] for r in Trainer(tiny_llama(tok, seed=11), tok, method, cfg, tmp_path).train(ex).log]
    assert len(losses) == 6 and losses[-1] < 0.9 * losses[0]
