"""The shared trainer: every method runs, resume is exact, accumulation is exact, caches agree."""
import copy
import math
import os
import json

import pytest
import torch

from baselines.kd import kd_loss
from dadpo.config import ObjectiveConfig, TrainConfig
from dadpo.examples import encode_rows
from dadpo.methods import build_method
from dadpo.testing import attach_scores, attach_topk, tiny_llama
from dadpo.trainer import Trainer

ROWS = [
    {"id": f"r{i}", "prompt": p, "chosen": c, "rejected": r}
    for i, (p, c, r) in enumerate([
        ("Hello", "Hello, how are you today?", "hi"),
        ("Capital of France?", "Paris is the capital.", "London"),
        ("Write a poem", "The sea and the sky.", "no"),
        ("Improve sleep?", "Routine, darkness, less caffeine.", "coffee"),
        ("Add numbers", "def add(a, b): return a + b", "a+b"),
        ("Relativity", "Explain the theory in simple terms.", "hard"),
        ("Fox", "The quick brown fox jumps.", "dog"),
        ("Digits", "0123456789", "9"),
    ])
]


@pytest.fixture()
def examples(tok):
    ex = encode_rows(tok, ROWS, max_len=64, max_prompt_tokens=32)
    ref, teacher = tiny_llama(tok, seed=5), tiny_llama(tok, seed=7, layers=2)
    attach_scores(ex, ref, tok.pad_token_id, "ref")
    attach_scores(ex, teacher, tok.pad_token_id, "te")
    attach_topk(ex, teacher, tok.pad_token_id, k=16, answers=("chosen", "rejected"))
    return ex


def _train(tok, examples, method, tmp, seed=0, max_steps=None, obj=None, **cfg):
    tcfg = TrainConfig(**{"per_device_batch": 4, "global_batch": 4, "lr": 1e-3, "sft_lr": 1e-3, "epochs": 2, "sft_epochs": 2,
                          "warmup_ratio": 0.0, **cfg})
    model = tiny_llama(tok, seed=11)
    tr = Trainer(model, tok, build_method(method, obj or ObjectiveConfig()), tcfg, tmp, seed=seed)
    res = tr.train(examples, max_steps=max_steps)
    losses = [r["loss"] for r in res.log]
    assert losses == [json.loads(line)["loss"] for line in open(tmp / "log.jsonl")]  # the live log agrees
    return res, losses, tr.model


@pytest.mark.parametrize("method", ["sft", "kd", "ddpo", "dadpo", "dadpo_token"])
def test_each_method_trains_and_saves(tok, examples, tmp_path, method):
    res, losses, model = _train(tok, examples, method, tmp_path)
    assert res.steps == 4 and len(losses) == 4 and all(l == l for l in losses)
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert max(losses) - min(losses) > 1e-4  # the loss moves
    start = tiny_llama(tok, seed=11)  # the weights _train started from
    assert any(not torch.equal(p, q) for p, q in zip(start.parameters(), model.parameters()))
    rec = res.log[0]
    if method in ("ddpo", "dadpo"):
        assert {"rewards/margins", "rewards/accuracy"} <= set(rec)
    if method == "dadpo":
        assert any("teacher" in k for k in rec), rec


def test_dadpo_with_beta2_zero_trains_like_ddpo(tok, examples, tmp_path):
    _, a, _ = _train(tok, examples, "ddpo", tmp_path / "a", obj=ObjectiveConfig(beta=0.2))
    _, b, _ = _train(tok, examples, "dadpo", tmp_path / "b", obj=ObjectiveConfig(beta1=0.2, beta2=0.0))
    assert a == pytest.approx(b, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("method", ["ddpo", "dadpo"])
def test_first_loss_is_the_loss_at_the_reference_when_starting_from_it(tok, examples, tmp_path, method):
    # the pipeline starts dDPO/daDPO from pi_ref = pi_dSFT and scores pi_ref in the trainer's numerics:
    # step 1 then sees policy log-probs equal to the cached reference ones (dDPO: loss = log 2)
    attach_scores(examples, tiny_llama(tok, seed=11), tok.pad_token_id, "ref")
    res, _, _ = _train(tok, examples, method, tmp_path, max_steps=1)
    rec = res.log[0]
    assert rec["loss"] == pytest.approx(rec["loss_at_ref"], abs=1e-5)
    if method == "ddpo":
        assert rec["loss"] == pytest.approx(math.log(2), abs=1e-5)
    else:
        assert abs(rec["loss"] - math.log(2)) > 1e-3  # the teacher term moves daDPO's start off log 2


@pytest.mark.parametrize("method", ["sft", "dadpo"])
def test_resume_gives_the_same_next_losses(tok, examples, tmp_path, method):
    _, full, m_full = _train(tok, examples, method, tmp_path / "full")
    res, first, _ = _train(tok, examples, method, tmp_path / "cut", max_steps=2)
    assert res.model_dir == "" and (tmp_path / "cut" / "checkpoint").is_dir()
    _, resumed, m_res = _train(tok, examples, method, tmp_path / "cut")
    assert first == pytest.approx(full[:2], rel=1e-6)
    assert resumed == pytest.approx(full, rel=1e-5, abs=1e-6)  # the log holds all 4 steps again
    for p, q in zip(m_full.parameters(), m_res.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["sft", "kd", "ddpo", "dadpo"])
def test_accumulation_equals_one_big_batch(tok, examples, tmp_path, method):
    """batch 1 x accumulation 4 == batch 4 x accumulation 1 (fp32, tolerance 1e-5 relative)."""
    _, la, ma = _train(tok, examples, method, tmp_path / "a", per_device_batch=4, global_batch=4, epochs=0.5, sft_epochs=0.5)
    _, lb, mb = _train(tok, examples, method, tmp_path / "b", per_device_batch=1, global_batch=4, epochs=0.5, sft_epochs=0.5)
    assert la == pytest.approx(lb, rel=1e-5)
    # Adam divides by sqrt(v): a gradient entry near 0 turns fp32 rounding of the different matmul shapes
    # (1 row vs 4 rows per forward) into up to ~1e-5 of movement; 1% of one lr=1e-3 step
    for p, q in zip(ma.parameters(), mb.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_global_batch_must_divide(tok, examples, tmp_path):
    with pytest.raises(ValueError, match="not a multiple"):
        _train(tok, examples, "sft", tmp_path, per_device_batch=3, global_batch=4)


def test_kd_topk_cache_matches_the_full_teacher_distribution(tok, examples, tmp_path):
    """With k = V the trainer's cached top-k + tail KD loss equals KD against the teacher's full logits,
    up to the float16 storage of cached log-probs (about 3 significant digits)."""
    from dadpo.scoring import ResponseScorer

    teacher = tiny_llama(tok, seed=7, layers=2)
    ex = copy.deepcopy(examples[:4])
    attach_topk(ex, teacher, tok.pad_token_id, k=len(tok))
    tcfg = TrainConfig(per_device_batch=4, global_batch=4, lr=1e-3, epochs=1, warmup_ratio=0.0)
    trainer = Trainer(tiny_llama(tok, seed=11), tok, build_method("kd", ObjectiveConfig()), tcfg, tmp_path)
    cached, _, _ = trainer.loss_sum(ex)
    from dadpo.chat import pad_batch

    b = pad_batch([e["chosen"] for e in ex], tok.pad_token_id)
    args = (b["input_ids"], b["attention_mask"], b["response_mask"])
    s_logits, _, _ = ResponseScorer(tiny_llama(tok, seed=11))(*args, want_logits=True)
    with torch.no_grad():
        t_logits, _, _ = ResponseScorer(teacher)(*args, want_logits=True)
    full, _ = kd_loss(s_logits[None], torch.ones(s_logits.shape[:1])[None], teacher_logits=t_logits[None])
    torch.testing.assert_close(cached, full * s_logits.shape[0], rtol=3e-3, atol=1e-5)


def test_lora_trains_and_saves_a_merged_plain_model(tok, examples, tmp_path):
    from transformers import AutoModelForCausalLM

    res, losses, _ = _train(tok, examples, "dadpo", tmp_path, lora=True, lora_r=4)
    assert len(losses) == 4 and all(l == l for l in losses)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "model")  # no peft needed to load it
    assert not any("lora" in n for n, _ in merged.named_parameters())
    base = tiny_llama(tok, seed=11)
    changed = [n for (n, p), (_, q) in zip(merged.named_parameters(), base.named_parameters())
               if not torch.allclose(p, q)]
    assert changed and all("proj" in n for n in changed)  # only the adapted linear layers moved


def test_peak_memory_is_per_training_run_not_per_process(tok, examples, tmp_path):
    big = torch.ones(50_000_000, dtype=torch.float64)  # 400 MB touched, then freed before training
    del big
    res, _, _ = _train(tok, examples, "sft", tmp_path)
    import psutil

    assert 0 < res.peak_memory_mb < psutil.Process().memory_info().rss / 2**20 + 300
