"""The both-orders protocol, the tie rule, and the judge base (cache, dedupe, failures)."""
import pytest

from evals.judges.base import Judge, JudgeItem, Verdict, VerdictCache, item_key, pairwise_messages
from evals.protocol import Pair, combine, compare, position_stats, student_view


class RuleJudge(Judge):
    """Says what `rule(item)` says; counts the items it really judged."""
    name = "rule"

    def __init__(self, rule, cache=None, tag="r1"):
        super().__init__(cache)
        self.rule, self.tag, self.calls = rule, tag, []

    @property
    def identity(self):
        return {"name": self.name, "tag": self.tag}

    def _judge_iter(self, items):
        self.calls += items
        for i, it in reversed(list(enumerate(items))):  # out of order on purpose
            v = self.rule(it)
            yield i, v if isinstance(v, Verdict) else Verdict(v)


def V(x):
    return Verdict.fail(x[1:]) if x.startswith("!") else Verdict(x)


def test_verdict_needs_reason_or_valid_outcome():
    with pytest.raises(ValueError):
        Verdict(None)
    with pytest.raises(ValueError):
        Verdict("C")
    assert Verdict.fail("boom").failed


@pytest.mark.parametrize("first,second,expected", [
    ("A", "B", ("win", True)),     # student wins in both positions
    ("B", "A", ("loss", True)),
    ("tie", "tie", ("tie", True)),
    ("A", "A", ("tie", False)),    # position A always wins: flips with the order -> tie
    ("B", "B", ("tie", False)),
    ("A", "tie", ("tie", False)),  # any disagreement is a tie (MT-Bench)
    ("tie", "A", ("tie", False)),
])
def test_combine_tie_rule(first, second, expected):
    outcome, consistent, failure = combine(V(first), V(second))
    assert (outcome, consistent) == expected and failure is None


def test_combine_failures_keep_reasons():
    o, c, f = combine(V("A"), V("!timeout"))
    assert (o, c) == ("failed", None) and f == "teacher_first: timeout"
    o, c, f = combine(V("!x"), V("!y"))
    assert o == "failed" and f == "student_first: x; teacher_first: y"


def test_student_view():
    assert student_view("A", True) == "win" and student_view("A", False) == "loss"
    assert student_view("B", False) == "win" and student_view("tie", True) == "tie"


def test_compare_both_orders_and_position_stats():
    pairs = [Pair("1", "p", "long student answer", "short"), Pair("2", "p", "s", "teacher wins here"),
             Pair("3", "p", "same", "same")]
    by_len = RuleJudge(lambda it: "A" if len(it.answer_a) > len(it.answer_b) else
                       "B" if len(it.answer_b) > len(it.answer_a) else "tie")
    comps = compare(by_len, pairs)
    assert [c.outcome for c in comps] == ["win", "loss", "tie"]
    c = comps[0]
    assert c.verdicts["student_first"].outcome == "A" and c.verdicts["teacher_first"].outcome == "B"
    assert by_len.calls[0] == JudgeItem("p", "long student answer", "short")
    assert by_len.calls[1] == JudgeItem("p", "short", "long student answer")
    assert position_stats(comps)["first_position_win_share"] == 0.5
    assert position_stats(comps)["order_consistency"] == 1.0

    always_a = RuleJudge(lambda it: "A")
    comps = compare(always_a, pairs)
    assert [c.outcome for c in comps] == ["tie"] * 3
    stats = position_stats(comps)
    assert stats["first_position_win_share"] == 1.0 and stats["order_consistency"] == 0.0


def test_cache_dedupe_and_failures_not_cached(tmp_path):
    cache = VerdictCache(tmp_path / "v.sqlite")
    rule = lambda it: Verdict.fail("flaky") if "fail" in it.prompt else "A"  # noqa: E731
    j = RuleJudge(rule, cache)
    items = [JudgeItem("p", "a", "b"), JudgeItem("p", "a", "b"), JudgeItem("fail", "a", "b"), JudgeItem("p", "b", "a")]
    v = j.judge(items)
    assert [x.outcome for x in v] == ["A", "A", None, "A"]
    assert len(j.calls) == 3  # the duplicate judged once
    assert len(cache) == 2
    j2 = RuleJudge(rule, VerdictCache(tmp_path / "v.sqlite"))
    v2 = j2.judge(items)
    assert j2.calls == [JudgeItem("fail", "a", "b")]  # only the failure is asked again
    assert v2[0].details == {"cached": True} and v2[2].failed
    j3 = RuleJudge(rule, VerdictCache(tmp_path / "v.sqlite"), tag="r2")  # other identity, other keys
    j3.judge(items[:1])
    assert len(j3.calls) == 1


def test_verdicts_judged_before_an_error_are_stored(tmp_path):
    """Commits are batched; a judge that breaks mid-way still leaves its finished verdicts stored."""
    def rule(it):
        if it.prompt == "boom":
            raise RuntimeError("judge broke")
        return "B"

    items = [JudgeItem(f"p{i}", "a", "b") for i in range(5)] + [JudgeItem("boom", "a", "b")]
    with pytest.raises(RuntimeError, match="judge broke"):
        RuleJudge(rule, VerdictCache(tmp_path / "v.sqlite")).judge(items)  # judged in reverse: boom first
    with pytest.raises(RuntimeError, match="judge broke"):
        RuleJudge(rule, VerdictCache(tmp_path / "v.sqlite")).judge(items[::-1])  # now boom comes last
    again = RuleJudge(rule, VerdictCache(tmp_path / "v.sqlite"))
    assert [v.outcome for v in again.judge(items[:5])] == ["B"] * 5 and again.calls == []


def test_item_key_covers_order_reference_and_identity():
    it = JudgeItem("p", "a", "b", "ref")
    k = item_key({"name": "x"}, it)
    assert k != item_key({"name": "x"}, it.swapped())
    assert k != item_key({"name": "x"}, JudgeItem("p", "a", "b", None))
    assert k != item_key({"name": "y"}, it)
    assert k == item_key({"name": "x"}, JudgeItem("p", "a", "b", "ref"))


def test_pairwise_prompt_is_literal_about_braces():
    it = JudgeItem("say {answer_b} and {x}", "A {0} text", "B text", None)
    user = pairwise_messages(it)[1]["content"]
    assert "say {answer_b} and {x}" in user and "A {0} text" in user
    assert user.index("A {0} text") < user.index("B text")
    assert "Reference" not in user
    ref = pairwise_messages(JudgeItem("q", "a", "b", "the ref"))
    assert "[The Start of Reference Answer]\nthe ref" in ref[1]["content"] and "reference" in ref[0]["content"]
    assert "Reference" not in pairwise_messages(JudgeItem("q", "a", "b", "r"), use_reference=False)[1]["content"]
