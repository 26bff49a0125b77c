"""Local instruct-model judge on the tiny random Llama from dadpo.testing."""
from types import SimpleNamespace

import pytest
import torch

from evals.judges import JudgeError, JudgeItem
from evals.judges.local import LocalJudge
from evals.protocol import Pair, compare

ITEMS = [JudgeItem("What is the capital of France?", "Paris.", "London is the capital."),
         JudgeItem("Write a poem", "The sea and the sky, a long poem of many words", "no", "ref answer"),
         JudgeItem("hi", "hello", "hey")]


@pytest.fixture(scope="module")
def judge(tiny_model_dir):
    return LocalJudge(str(tiny_model_dir), dtype="float32", min_mass=0.0, batch_size=3)


def test_probabilities_are_sensible_and_batching_changes_nothing(judge):
    v = judge.judge(ITEMS)
    for x in v:
        p, mass = x.details["p"], x.details["mass"]
        assert set(p) == {"A", "B", "C"} and all(0 < q < 1 for q in p.values())
        assert mass == pytest.approx(sum(p.values())) and 0 < mass <= 1
        assert sum(x.details["p_norm"].values()) == pytest.approx(1.0)
        assert x.outcome == {"A": "A", "B": "B", "C": "tie"}[max(p, key=p.get)]
    texts = [judge._render(it) for it in ITEMS]
    batched = judge.probabilities(texts)
    judge.batch_size = 1
    try:
        single = judge.probabilities(texts)
    finally:
        judge.batch_size = 3
    for b, s in zip(batched, single):  # left padding with real-token positions: same as alone
        assert b["p"] == pytest.approx(s["p"], rel=1e-4, abs=1e-7)
    assert judge.identity["decoding"]["mode"] == "verdict-token probabilities"
    assert judge.identity["response_prefix"] == "[["


def test_prompt_ends_with_the_verdict_prefix_after_the_chat_template(judge):
    text = judge._render(ITEMS[1])
    assert text.endswith("<|im_start|>assistant\n[[")
    assert "<|im_start|>system\n" in text and "[The Start of Reference Answer]\nref answer" in text
    assert len(set(judge.label_ids.values())) == 3


def test_both_orders(judge):
    comps = compare(judge, [Pair(str(i), it.prompt, it.answer_a, it.answer_b) for i, it in enumerate(ITEMS)])
    for c in comps:
        assert c.outcome in ("win", "tie", "loss")
        assert set(c.verdicts) == {"student_first", "teacher_first"}
        assert c.verdicts["student_first"].details["p"] != c.verdicts["teacher_first"].details["p"]


class FixedLogits(torch.nn.Module):
    """Stands in for the LM: the next token is always `token` (logit 20 against 0)."""

    def __init__(self, vocab, token):
        super().__init__()
        self.vocab, self.token = vocab, token
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep):
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab)
        logits[:, :, self.token] = 20.0
        return SimpleNamespace(logits=logits)


def test_verdict_read_from_the_letter_tokens(tiny_model_dir):
    j = LocalJudge(str(tiny_model_dir), dtype="float32", min_mass=0.5)
    vocab = j.model.get_input_embeddings().weight.shape[0]
    for letter, verdict in (("A", "A"), ("B", "B"), ("C", "tie")):
        j.model = FixedLogits(vocab, j.label_ids[letter])
        v = j.judge(ITEMS[:1])[0]
        assert v.outcome == verdict and v.details["mass"] > 0.99
    j.model = FixedLogits(vocab, 0)  # all mass on a non-verdict token: a failure with a reason
    v = j.judge(ITEMS[:1])[0]
    assert v.failed and "hold only" in v.reason and v.details["mass"] < 1e-3


def test_too_long_input_fails_and_bad_dtype_refused(tiny_model_dir):
    j = LocalJudge(str(tiny_model_dir), dtype="float32", min_mass=0.0, max_input_tokens=50)
    v = j.judge(ITEMS[:1])[0]
    assert v.failed and "too long" in v.reason
    with pytest.raises(JudgeError, match="dtype"):
        LocalJudge(str(tiny_model_dir), dtype="int8")
    with pytest.raises(JudgeError, match="cannot load"):
        LocalJudge(str(tiny_model_dir / "missing"))
