"""Chunked log-prob helpers against plain log_softmax + gather references."""
import math

import pytest
import torch

from baselines.numerics import (LOG_FLOOR, hidden_to_token_logprobs, sequence_logprobs, token_logprobs,
                            topk_with_tail)


def _reference(logits, labels):
    lp = torch.log_softmax(logits.double(), -1)
    safe = labels.clamp_min(0)
    out = lp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(labels == -100, torch.zeros_like(out), out)


def _batch(B=3, T=9, V=17, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(B, T, V, generator=g)).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :3] = -100  # prompt positions
    labels[-1, -2:] = -100  # padding
    return logits, labels


@pytest.mark.parametrize("chunk", [1, 4, 7, 1024])
def test_token_logprobs_values_and_grads(chunk):
    logits, labels = _batch()
    logits.requires_grad_(True)
    out = token_logprobs(logits, labels, chunk_size=chunk)
    ref_logits = logits.detach().clone().requires_grad_(True)
    ref = _reference(ref_logits, labels)
    assert out.dtype == torch.float64 and out.shape == labels.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    assert torch.all(out[labels == -100] == 0)
    w = torch.randn(labels.shape, dtype=torch.float64)
    (g,) = torch.autograd.grad((out * w).sum(), logits)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), ref_logits)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)


def test_token_logprobs_gradcheck_and_noncontiguous():
    logits, labels = _batch(B=2, T=5, V=6, seed=1)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: token_logprobs(x, labels, chunk_size=3), (logits,))
    # causal-LM usage: sliced (non-contiguous) logits, shifted labels
    sliced = logits[:, :-1]
    assert not sliced.is_contiguous()
    out = token_logprobs(sliced, labels[:, 1:], chunk_size=2)
    torch.testing.assert_close(out, _reference(sliced.detach(), labels[:, 1:]), rtol=0, atol=1e-12)
    out.sum().backward()
    assert logits.grad[:, -1].abs().sum() == 0 and logits.grad[:, :-1].abs().sum() > 0


def test_token_logprobs_bf16():
    logits, labels = _batch(B=2, T=16, V=1000, seed=2, dtype=torch.float32)
    ref = _reference(logits.bfloat16().double(), labels)
    bl = logits.bfloat16().requires_grad_(True)
    out = token_logprobs(bl, labels, chunk_size=5)
    assert out.dtype == torch.float32  # accumulated in float32, not bf16
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-4)
    out.sum().backward()
    assert bl.grad.dtype == torch.bfloat16 and torch.isfinite(bl.grad.float()).all()


def test_sequence_logprobs():
    lp = torch.tensor([[-1.0, -2.0, float("nan"), -4.0], [-0.5, float("-inf"), -1.5, -2.5]])
    mask = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 0]])
    torch.testing.assert_close(sequence_logprobs(lp, mask), torch.tensor([-7.0, -0.5]))
    torch.testing.assert_close(sequence_logprobs(lp, mask.bool(), length_average=True),
                               torch.tensor([-7.0 / 3, -0.5]))
    empty = sequence_logprobs(lp, torch.zeros_like(mask), length_average=True)
    torch.testing.assert_close(empty, torch.zeros(2))


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_hidden_to_token_logprobs_matches_plain_path(chunk):
    g = torch.Generator().manual_seed(3)
    B, T, H, V = 2, 7, 8, 23
    hidden = torch.randn(B, T, H, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[1, :2] = -100
    out = hidden_to_token_logprobs(hidden, weight, labels, chunk_size=chunk)
    ref = token_logprobs(hidden @ weight.T, labels)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    w = torch.randn(B, T, generator=g, dtype=torch.float64)
    gh, gw = torch.autograd.grad((out * w).sum(), (hidden, weight))
    gh_ref, gw_ref = torch.autograd.grad((ref * w).sum(), (hidden, weight))
    torch.testing.assert_close(gh, gh_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(gw, gw_ref, rtol=0, atol=1e-12)
    assert gh[1, :2].abs().sum() == 0
    with torch.no_grad():  # no-grad path (scoring) gives the same values
        torch.testing.assert_close(hidden_to_token_logprobs(hidden, weight, labels, chunk), ref.detach())


def test_hidden_path_on_tiny_llama(tiny_model):
    """The real use: base-model hidden states + the (tied) LM head == the model's own logits."""
    model = tiny_model.double()
    ids = torch.randint(0, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(0))
    labels = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], dim=1)
    hidden = model.model(input_ids=ids).last_hidden_state
    out = hidden_to_token_logprobs(hidden, model.lm_head.weight, labels, chunk_size=4)
    ref = token_logprobs(model(input_ids=ids).logits, labels)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    (g,) = torch.autograd.grad(out.sum(), model.lm_head.weight)
    (g_ref,) = torch.autograd.grad(ref.sum(), model.lm_head.weight)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-10)


def test_topk_with_tail():
    g = torch.Generator().manual_seed(4)
    V = 11
    logits = torch.randn(3, 4, V, generator=g, dtype=torch.float64)
    for temp in (1.0, 0.7):
        lp = torch.log_softmax(logits / temp, -1)
        for k in (1, 3, V):
            top = topk_with_tail(logits, k, temperature=temp, chunk_size=5)
            assert top.logprobs.shape == (3, 4, k) and top.ids.shape == (3, 4, k) and top.tail.shape == (3, 4)
            torch.testing.assert_close(top.logprobs, lp.gather(-1, top.ids), rtol=0, atol=1e-12)
            torch.testing.assert_close(top.logprobs, lp.topk(k, -1).values, rtol=0, atol=1e-12)
            if k < V:
                expect = torch.log1p(-top.logprobs.exp().sum(-1))
                torch.testing.assert_close(top.tail, expect, rtol=0, atol=1e-10)
            else:
                assert torch.all(top.tail == LOG_FLOOR) and torch.all(top.tail.exp() == 0)


def test_topk_tail_accurate_when_tiny():
    # tail mass e^-50: log1p(-sum p) would round to log(0) = -inf, the complement logsumexp does not
    logits = torch.tensor([[0.0, -50.0, -60.0]], dtype=torch.float64)
    top = topk_with_tail(logits, 1)
    expect = math.log(math.exp(-50) + math.exp(-60)) - math.log1p(math.exp(-50) + math.exp(-60))
    assert abs(top.tail.item() - expect) < 1e-9
    with pytest.raises(ValueError):
        topk_with_tail(logits, 4)


def _saved_bytes(fn, *inputs):
    """Bytes autograd saves for backward, not counting storage the inputs already own."""
    own = {x.untyped_storage().data_ptr() for x in inputs}
    seen = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in own:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def test_memory_discipline_no_vocab_sized_saved_tensors():
    B, T, V, H = 2, 32, 3000, 8
    full_f32 = B * T * V * 4
    logits = torch.randn(B, T, V).bfloat16().requires_grad_(True)
    labels = torch.randint(0, V, (B, T))
    naive = _saved_bytes(lambda: torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None]), logits, labels)
    assert naive >= full_f32  # what plain autograd keeps: a float32 copy of all logits
    assert _saved_bytes(lambda: token_logprobs(logits, labels, 16), logits, labels) < B * T * 16
    hidden, weight = torch.randn(B, T, H, requires_grad=True), torch.randn(V, H, requires_grad=True)
    saved = _saved_bytes(lambda: hidden_to_token_logprobs(hidden, weight, labels, 16), hidden, weight, labels)
    assert saved < B * T * (H + 4) * 8  # chunk inputs only; no [*, V] logits kept for backward


def _head_case(dtype=torch.float64, N=37, H=8, V=53, seed=4, bias=True):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, H, generator=g, dtype=dtype)
    w = torch.randn(V, H, generator=g, dtype=dtype)
    b = torch.randn(V, generator=g, dtype=dtype) if bias else None
    return h, w, b, torch.randint(0, V, (N,), generator=g)


@pytest.mark.parametrize("implementation", ["chunked", "fused"])
@pytest.mark.parametrize("chunk", [1, 5, 1024])
def test_head_implementations_match_full_logits_log_softmax(implementation, chunk):
    from baselines.head import head_logprobs

    h, w, b, y = _head_case()
    ins = [t.clone().requires_grad_(True) for t in (h, w, b)]
    out = head_logprobs(implementation, ins[0], ins[1], y, chunk, bias=ins[2])
    ref_ins = [t.clone().requires_grad_(True) for t in (h, w, b)]
    ref = torch.log_softmax(ref_ins[0] @ ref_ins[1].T + ref_ins[2], -1).gather(-1, y[:, None]).squeeze(-1)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g = torch.randn(y.shape, dtype=torch.float64)  # per-token weights, as a DPO margin gives
    grads = torch.autograd.grad((out * g).sum(), ins)
    ref_grads = torch.autograd.grad((ref * g).sum(), ref_ins)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=0, atol=1e-10)


def test_fused_head_gradcheck_without_bias_and_float32():
    from baselines.head import head_logprobs

    h, w, _, y = _head_case(N=6, H=3, V=7, bias=False)
    h.requires_grad_(True)
    w.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: head_logprobs("fused", a, b, y, 4), (h, w))
    h32, w32 = h.detach().float(), w.detach().float()
    out = head_logprobs("fused", h32, w32, y, 2)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), head_logprobs("chunked", h.detach(), w.detach(), y), rtol=0, atol=1e-5)


def test_pick_implementation(monkeypatch):
    import baselines.head as head

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(head, "liger_available", lambda: True)
    assert head.pick_implementation("auto", cuda) == "liger"
    assert head.pick_implementation("auto", cpu) == "chunked"  # liger's Triton kernels need CUDA
    assert head.pick_implementation("fused", cuda) == "fused" and head.pick_implementation("chunked", cpu) == "chunked"
    with pytest.raises(ValueError, match="needs CUDA"):
        head.pick_implementation("liger", cpu)
    monkeypatch.setattr(head, "liger_available", lambda: False)
    assert head.pick_implementation("auto", cuda) == "chunked"
    with pytest.raises(ValueError, match="liger-kernel"):
        head.pick_implementation("liger", cuda)
    with pytest.raises(ValueError, match="unknown"):
        head.pick_implementation("triton", cpu)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="liger-kernel runs Triton kernels: CUDA only")
def test_liger_head_matches_chunked_on_cuda():
    """Skipped without CUDA (liger-kernel's Triton kernels); needs liger-kernel (the `fast` extra)."""
    pytest.importorskip("liger_kernel")
    from baselines.head import head_logprobs

    h, w, b, y = _head_case(dtype=torch.float32, N=300, H=64, V=5000)
    got = {}
    for impl in ("chunked", "liger"):
        ins = [t.cuda().requires_grad_(True) for t in (h, w, b)]
        out = head_logprobs(impl, ins[0], ins[1], y.cuda(), 128, bias=ins[2])
        g = torch.linspace(-1, 1, y.numel(), device="cuda")
        got[impl] = (out, torch.autograd.grad((out * g).sum(), ins))
    torch.testing.assert_close(got["liger"][0], got["chunked"][0], rtol=0, atol=1e-4)
    for a, r in zip(got["liger"][1], got["chunked"][1]):
        torch.testing.assert_close(a, r, rtol=1e-3, atol=1e-4)
