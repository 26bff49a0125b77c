"""Packed micro-batches (dadpo.packing) against padded ones: same log-probs, losses and gradients."""
import copy

import pytest
import torch

from dadpo.config import ObjectiveConfig, TrainConfig
from dadpo.examples import encode_rows
from dadpo.methods import build_method
from dadpo.packing import micro_batch, pack_rows, real_tokens
from dadpo.precompute import sequence_logprobs
from dadpo.scoring import ResponseScorer
from dadpo.testing import attach_scores, tiny_llama
from dadpo.trainer import Trainer

ROWS = [{"id": f"r{i}", "prompt": p, "chosen": c, "rejected": r} for i, (p, c, r) in enumerate([
    ("Hello", "Hello, how are you today? I am fine.", "hi"),
    ("Capital of France?", "Paris.", "London is the capital of France, of course."),
    ("Write a poem", "The sea and the sky.", "no"),
])]


@pytest.fixture()
def examples(tok):
    ex = encode_rows(tok, ROWS, max_len=64, max_prompt_tokens=32)
    attach_scores(ex, tiny_llama(tok, seed=5), tok.pad_token_id, "ref")
    attach_scores(ex, tiny_llama(tok, seed=7, layers=2), tok.pad_token_id, "te")
    return ex


def test_pack_rows_layout():
    rows = [{"input_ids": [5, 6, 7], "response_mask": [0, 1, 1]}, {"input_ids": [8, 9], "response_mask": [1, 1]},
            {"input_ids": [4], "response_mask": [1]}, {"input_ids": [3, 2], "response_mask": [0, 1]}]
    b = pack_rows(rows, pad_id=0)
    # bins of the longest row (3), filled in row order; only a bin's end is padded
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 9, 4], [3, 2, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2], [0, 1, 0], [0, 1, 0]]
    assert b["row"].tolist() == [[0, 0, 0], [1, 1, 2], [3, 3, -1]]
    assert b["response_mask"].tolist() == [[0, 1, 1], [0, 1, 0], [0, 1, 0]]  # a row's first token has no predecessor
    assert "attention_mask" not in b and real_tokens(b) == 8
    assert real_tokens(micro_batch(rows, 0, packing=False)) == 8


def test_packed_log_probs_equal_padded_per_row(tok, examples):
    model = tiny_llama(tok, seed=3).double()
    rows = [e[a] for a in ("chosen", "rejected") for e in examples]
    # and short rows (answer ends), which share bins with long ones, out of row order
    rows += [{"input_ids": r["input_ids"][-6:], "response_mask": [0] + r["response_mask"][-5:]} for r in rows[:3]]
    bins = pack_rows(rows, tok.pad_token_id)["row"]
    assert bins.shape[0] < len(rows) and any(len(set(b.tolist()) - {-1}) > 1 for b in bins)
    out = {}
    for packing in (False, True):
        lp, labels, row = ResponseScorer(model)(**micro_batch(rows, tok.pad_token_id, packing))
        out[packing] = (lp, labels, row)
    torch.testing.assert_close(out[True][0], out[False][0], rtol=0, atol=1e-10)
    assert torch.equal(out[True][1], out[False][1]) and torch.equal(out[True][2], out[False][2])
    # a row alone gives the same numbers: nothing leaks across row boundaries
    for i, r in enumerate(rows):
        alone, _, _ = ResponseScorer(model)(**pack_rows([r]))
        torch.testing.assert_close(out[True][0][out[True][2] == i], alone, rtol=0, atol=1e-10)
    # precompute agrees in both layouts too
    enc = [e["chosen"] for e in examples]
    a, b = (sequence_logprobs(model, enc, tok.pad_token_id, 2, packing=p)["sum"] for p in (False, True))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


@pytest.mark.parametrize("method", ["sft", "ddpo", "dadpo"])
def test_packed_and_padded_steps_give_equal_losses_and_gradients(tok, examples, tmp_path, method):
    got = {}
    for packing in (False, True):
        cfg = TrainConfig(per_device_batch=3, global_batch=3, packing=packing, lm_head="chunked")
        tr = Trainer(tiny_llama(tok, seed=11), tok, build_method(method, ObjectiveConfig()), cfg,
                     tmp_path / str(packing))
        loss, metrics, ntok = tr.loss_sum(copy.deepcopy(examples))
        loss.backward()
        grads = [p.grad.clone() for p in tr.model.parameters()]
        got[packing] = (loss.detach(), ntok, grads)
    torch.testing.assert_close(got[True][0], got[False][0], rtol=1e-6, atol=1e-6)
    assert got[True][1] == got[False][1]  # the same real tokens: padding was never counted
    for a, b in zip(got[True][2], got[False][2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_trainer_feeds_packed_bins(tok, examples, tmp_path):
    cfg = TrainConfig(per_device_batch=3, global_batch=3)  # packing is the default
    tr = Trainer(tiny_llama(tok, seed=11), tok, build_method("ddpo", ObjectiveConfig()), cfg, tmp_path)
    seen = []
    hook = tr.model.get_decoder().register_forward_pre_hook(lambda m, a, kw: seen.append(kw), with_kwargs=True)
    tr.step(examples)
    hook.remove()
    (kw,) = seen
    rows = [e[a] for a in ("chosen", "rejected") for e in examples]
    width = max(len(r["input_ids"]) for r in rows)
    assert kw["attention_mask"] is None and kw["input_ids"].shape[1] == width
    assert kw["input_ids"].shape[0] <= len(rows)  # (these rows are all over half the longest: no sharing)
    packed = pack_rows(rows, tok.pad_token_id)
    assert torch.equal(kw["input_ids"], packed["input_ids"]) and torch.equal(kw["position_ids"], packed["position_ids"])
    for i, r in enumerate(rows):  # every row's tokens, contiguous and in order, in some bin
        assert packed["input_ids"][packed["row"] == i].tolist() == r["input_ids"]
