"""The stage clock of a run: each stage announced with its position, timed, its peak memory and
tokens recorded (the measured rates reproduce.plan projects from), and its warnings grouped."""
from __future__ import annotations

import re
import time
import warnings
from contextlib import contextmanager

from dadpo.memory import PeakMemory
from dadpo.modeling import device


def reissue(caught: list) -> None:
    """Warnings of one stage, once per kind (digits blanked), with how many more there were."""
    kinds: dict = {}
    for w in caught:
        kinds.setdefault((w.category, re.sub(r"\d+", "#", str(w.message))), []).append(w)
    for ws in kinds.values():
        w = ws[0]
        more = f" (and {len(ws) - 1} more like it)" if len(ws) > 1 else ""
        warnings.warn_explicit(f"{w.message}{more}", w.category, w.filename, w.lineno)


@contextmanager
def grouped_warnings():
    """Warnings raised inside are collected (the list is yielded) and re-issued once per kind at the end."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
    reissue(caught)


GAP_LOG_S = 5.0  # time outside stages worth a line of its own


class Stages:
    """`with stages(name, tokens):` times one stage. `timings` (seconds per stage name) and `stats`
    (seconds, peak_memory_mb: GPU memory on a GPU, else RSS; tokens when given) accumulate over the
    run; `expected` is the run's stage count for the "7/25" position (0 = unknown); `on_change`, if
    set, is called as each stage starts and ends (the pipeline journals its facts there).
    Time between stages (loading, encoding, cache lookups) is kept in `between`, keyed by the stage
    that followed; `outside()` adds the time since the last stage ended."""

    def __init__(self, label: str, log=print):
        self.label, self.log = label, log
        self.timings: dict[str, float] = {}
        self.stats: dict[str, dict] = {}
        self.between: dict[str, float] = {}
        self.started = 0
        self.expected = 0
        self.on_change = None
        self.born = self.last_end = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.born

    def outside(self) -> dict[str, float]:
        """Seconds spent outside any stage so far, by the stage that followed, plus "after the last stage"."""
        return {**self.between, "after the last stage": round(time.perf_counter() - self.last_end, 2)}

    @contextmanager
    def __call__(self, name: str, tokens: int | None = None):
        t0 = time.perf_counter()
        self.started += 1
        where = f"[{self.label} {self.started}/{max(self.started, self.expected)}]"
        gap = t0 - self.last_end
        self.between[f"before {name}"] = round(self.between.get(f"before {name}", 0.0) + gap, 2)
        if gap >= GAP_LOG_S:
            self.log(f"[{self.label}] {gap:.1f}s outside stages before {name}")
        self.log(f"{where} {name} ...")
        if self.on_change:
            self.on_change()
        # a few hundred truncated prompts make one line, not hundreds
        with PeakMemory(device()) as peak, grouped_warnings() as caught:
            yield
        self.last_end = time.perf_counter()
        dt = self.last_end - t0
        self.timings[name] = round(self.timings.get(name, 0.0) + dt, 2)
        st = self.stats.setdefault(name, {"seconds": 0.0, "peak_memory_mb": 0.0})
        st["seconds"] = round(st["seconds"] + dt, 2)
        st["peak_memory_mb"] = round(max(st["peak_memory_mb"], peak.peak_mb), 1)
        if tokens is not None:
            st["tokens"] = st.get("tokens", 0) + tokens
        self.log(f"{where} {name} done in {dt:.1f}s, peak {peak.peak_mb / 1024:.1f} GB"
                 + (f" ({len(caught)} warnings)" if caught else "") + f", at {self.elapsed():.0f}s")
        if self.on_change:
            self.on_change()
