"""The stage clock: positions, timings, grouped warnings, and the journal hook."""
import warnings

from dadpo.stages import Stages, grouped_warnings


def _warn_truncations(n: int) -> None:
    for i in range(n):
        warnings.warn(f"prompt of {300 + i} tokens truncated to 256 (kept the end)", UserWarning)


def test_warnings_of_a_stage_and_outside_one_come_once_per_kind():
    lines, changes = [], []
    stages = Stages("t1/x", log=lines.append)
    stages.on_change = lambda: changes.append(dict(stages.stats))
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with stages("generate:teacher/train", tokens=40):
            _warn_truncations(190)
        with grouped_warnings():  # e.g. encoding training rows between stages
            _warn_truncations(3)
            warnings.warn("another kind", RuntimeWarning)
    assert [str(w.message) for w in shown] == [
        "prompt of 300 tokens truncated to 256 (kept the end) (and 189 more like it)",
        "prompt of 300 tokens truncated to 256 (kept the end) (and 2 more like it)", "another kind"]
    assert lines[0] == "[t1/x 1/1] generate:teacher/train ..." and "(190 warnings)" in lines[1]
    st = stages.stats["generate:teacher/train"]
    assert st["tokens"] == 40 and st["seconds"] >= 0 and stages.timings["generate:teacher/train"] == st["seconds"]
    assert changes == [{}, {"generate:teacher/train": st}]  # journaled as the stage starts and as it ends
