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


def test_time_outside_stages_is_kept_by_the_stage_that_followed(monkeypatch):
    import re
    import time

    import dadpo.stages

    monkeypatch.setattr(dadpo.stages, "GAP_LOG_S", 0.05)
    lines = []
    stages = Stages("t1/x", log=lines.append)
    time.sleep(0.1)  # e.g. loading and encoding before the first stage
    with stages("data"):
        pass
    with stages("train:sft"):  # straight after: no line for the gap
        time.sleep(0.06)
    time.sleep(0.08)
    out = stages.outside()
    assert set(out) == {"before data", "before train:sft", "after the last stage"}
    assert out["before data"] >= 0.1 and out["before train:sft"] < 0.05 and out["after the last stage"] >= 0.08
    assert stages.timings["train:sft"] >= 0.06  # the gaps are not counted in the stages
    gap_lines = [ln for ln in lines if "outside stages" in ln]
    assert len(gap_lines) == 1 and re.fullmatch(r"\[t1/x\] \d+\.\ds outside stages before data", gap_lines[0])
    assert re.fullmatch(r"\[t1/x 2/2\] train:sft done in \d+\.\ds, peak [\d.]+ GB, at \d+s", lines[-1])
