"""ROUGE-L F-measure against hand-computed longest common subsequences."""
import math

import pytest

from evals.rouge import rouge_l


def test_rouge_l_by_hand_with_stemming_and_skipped_references():
    # "the cat sat on the mat" vs "the cat is on the mat": LCS "the cat on the mat" = 5 of 6 tokens each side
    assert rouge_l(["the cat sat on the mat"], ["the cat is on the mat"]) == {"rouge_l_f": pytest.approx(5 / 6),
                                                                             "n": 1}
    # stemming: "cats running" matches "cat run" fully (LCS 2 of 2)
    assert rouge_l(["Cats running"], ["cat run"])["rouge_l_f"] == pytest.approx(1.0)
    # items without a reference are skipped, not scored 0
    r = rouge_l(["the cat sat on the mat", "cats running", "anything", "x"],
                ["the cat is on the mat", "cat run", None, "  "])
    assert r == {"rouge_l_f": pytest.approx((5 / 6 + 1) / 2), "n": 2}
    assert rouge_l(["completely different"], ["nothing shared"])["rouge_l_f"] == 0.0


def test_rouge_l_no_references_and_bad_input():
    r = rouge_l(["a"], [None])
    assert r["n"] == 0 and math.isnan(r["rouge_l_f"])
    with pytest.raises(ValueError, match="2 answers but 1 references"):
        rouge_l(["a", "b"], ["a"])


def test_rouge_l_equals_rouge_score_on_random_texts():
    """The fast path gives rouge-score's own ROUGE-L F on varied texts (punctuation, case, stems,
    empty answers, repeated words), so the committed numbers do not move."""
    import random

    from rouge_score import rouge_scorer

    rng = random.Random(0)
    words = ["The", "cat", "cats", "running", "run", "ran", "mat", "on", "is", "a", "b2", "Hello,", "world!",
             "café", "über", "--", "3.14", "tokens", "token", "decoding"]
    answers = [" ".join(rng.choices(words, k=rng.randint(0, 60))) for _ in range(60)]
    refs = [" ".join(rng.choices(words, k=rng.randint(1, 60))) for _ in range(60)]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    for a, r in zip(answers, refs):
        assert rouge_l([a], [r])["rouge_l_f"] == pytest.approx(scorer.score(r, a)["rougeL"].fmeasure, abs=1e-12)
