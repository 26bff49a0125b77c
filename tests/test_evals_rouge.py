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
