"""The verdict cache and `python -m evals.run` under damaged or unusable caches and bad options: a
damaged cache is moved aside and rebuilt with a warning, anything else is a one-line error found
before any judging, never a traceback."""
import json
import os
import subprocess
from contextlib import contextmanager

import pytest

import evals.run as erun
from evals.judges import JudgeError, Verdict, VerdictCache


def _filled(path, n=200):
    cache = VerdictCache(path)
    for i in range(n):
        cache.put(f"k{i}", {"name": "rule"}, Verdict("A", details={"i": i, "pad": "x" * 200}))
    cache.close()
    return path


@contextmanager
def read_only(*paths):
    """Make paths unwritable, for root too (chattr +i), restored afterwards."""
    modes = {p: p.stat().st_mode for p in paths}
    for p in paths:
        p.chmod(0o555 if p.is_dir() else 0o444)
    immutable = os.geteuid() == 0
    try:
        if immutable:
            for p in paths:
                if subprocess.run(["chattr", "+i", str(p)], capture_output=True).returncode:
                    pytest.skip("running as root where chattr +i is not allowed: nothing can be made read-only")
        yield
    finally:
        for p in paths:
            if immutable:
                subprocess.run(["chattr", "-i", str(p)], capture_output=True)
            p.chmod(modes[p])


@pytest.mark.parametrize("keep", [0.5, 0.003])
def test_a_damaged_verdict_cache_is_moved_aside_and_rebuilt(tmp_path, keep):
    """A database cut short (a full disk, a copy interrupted): detected on open, kept beside for
    inspection, replaced by an empty one; its verdicts are judged again."""
    db = _filled(tmp_path / "verdicts.sqlite")
    blob = db.read_bytes()
    db.write_bytes(blob[: max(1, int(len(blob) * keep))])
    damaged = db.read_bytes()
    with pytest.warns(UserWarning, match=r"verdict cache .*verdicts\.sqlite is damaged .* moved to .*; its verdicts "
                                         r"will be judged again"):
        cache = VerdictCache(db)
    assert len(cache) == 0 and cache.get("k1") is None
    cache.put("k1", {"name": "rule"}, Verdict("B"))
    assert cache.get("k1").outcome == "B"
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("verdicts.sqlite.damaged-")]
    assert len(aside) == 1 and aside[0].read_bytes() == damaged


def test_a_sound_verdict_cache_opens_without_a_word(tmp_path, recwarn):
    db = _filled(tmp_path / "v.sqlite", n=3)
    assert len(VerdictCache(db)) == 3
    assert not recwarn.list and sorted(p.name for p in tmp_path.iterdir()) == ["v.sqlite"]


def test_a_file_that_is_no_database_is_an_error_and_left_alone(tmp_path):
    """--cache pointing at some other file: never moved or overwritten, a one-line error."""
    other = tmp_path / "answers.jsonl"
    other.write_text('{"id": 1, "prompt": "p", "answer": "a"}\n' * 50)
    before = other.read_bytes()
    with pytest.raises(JudgeError, match=r"^verdict cache .*answers\.jsonl is not a SQLite database"):
        VerdictCache(other)
    assert other.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["answers.jsonl"]


def test_a_read_only_verdict_cache_fails_when_opened(tmp_path):
    """Not on the first verdict it must store (after paying for it): when the cache is opened."""
    db = _filled(tmp_path / "judges" / "v.sqlite", n=2)
    with read_only(db, db.parent):
        with pytest.raises(JudgeError, match=r"^verdict cache .*v\.sqlite is not writable"):
            VerdictCache(db)


# ------------------------------------------------------------------------------------- evals.run
def _answers(tmp_path):
    d = tmp_path / "answers"
    d.mkdir()
    rows = [{"id": f"q{i}", "prompt": f"question {i}", "answer": "t" * 5, "reference": "ref"} for i in range(3)]
    (d / "teacher.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "s.jsonl").write_text("".join(json.dumps({**r, "answer": "s"}) + "\n" for r in rows))
    return d


def _fails(capsys, monkeypatch, argv, expect, rc=None):
    """evals.run ends with one line "error: ..." before judging anything, and writes nothing."""
    def no_judging(*a, **k):
        raise AssertionError("judging started")

    monkeypatch.setattr(erun, "judge_all", no_judging)
    capsys.readouterr()
    code = erun.main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code != 0 and (rc is None or code == rc), (code, err)
    assert len(lines) == 1 and "error: " in lines[0] and expect in lines[0], err
    assert "Traceback" not in err


def _base(tmp_path, d):
    return ["--suite", "in_domain", "--judge", "reference", "--answers", d, "--embedder", tmp_path / "none"]


def test_evals_run_out_that_is_a_file(tmp_path, capsys, monkeypatch):
    d = _answers(tmp_path)
    out = tmp_path / "out.txt"
    out.write_text("not a folder")
    _fails(capsys, monkeypatch, [*_base(tmp_path, d), "--out", out, "--no-cache"], "--out")
    assert out.read_text() == "not a folder"


@pytest.mark.parametrize("opt", ["--batch-size", "--concurrency", "--limit"])
@pytest.mark.parametrize("value", ["0", "-2"])
def test_evals_run_counts_below_one(tmp_path, capsys, monkeypatch, opt, value):
    d = _answers(tmp_path)
    _fails(capsys, monkeypatch, [*_base(tmp_path, d), "--out", tmp_path / "out", "--no-cache", opt, value],
           f"{opt} must be >= 1", rc=2)
    assert not (tmp_path / "out").exists()


def test_evals_run_cache_that_is_no_database(tmp_path, capsys, monkeypatch):
    d = _answers(tmp_path)
    _fails(capsys, monkeypatch, [*_base(tmp_path, d), "--out", tmp_path / "out", "--cache", d / "teacher.jsonl"],
           "is not a SQLite database")
    assert not (tmp_path / "out").exists()


def test_evals_run_read_only_cache(tmp_path, capsys, monkeypatch):
    d = _answers(tmp_path)
    db = _filled(tmp_path / "judges" / "v.sqlite", n=2)
    with read_only(db, db.parent):
        _fails(capsys, monkeypatch, [*_base(tmp_path, d), "--out", tmp_path / "out", "--cache", db],
               "is not writable")
    assert not (tmp_path / "out").exists()


def test_evals_run_where_every_judge_call_failed_exits_non_zero(tmp_path, capsys, monkeypatch):
    """An endpoint that never answers: a one-line error and exit 3, not a table of failures and 0."""
    pytest.importorskip("openai")
    from evals.judges.api import Backoff
    from test_evals_api import FakeChat

    dead = FakeChat()
    dead.close()  # nothing listens on its port any more
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0000")
    real = erun._judge_kwargs
    monkeypatch.setattr(erun, "_judge_kwargs", lambda name, args: {
        **real(name, args), "timeout_s": 0.5, "max_attempts": 2, "backoff": Backoff(base=0.01, seed=0)})
    d = _answers(tmp_path)
    capsys.readouterr()
    rc = erun.main([str(a) for a in ("--suite", "mt_bench", "--judge", "api", "--answers", d, "--api-base-url",
                                     dead.url, "--out", tmp_path / "out", "--no-cache")])
    err = capsys.readouterr().err.strip()
    assert rc == 3 and "\n" not in err and "error: api judge: all 6 judge calls failed" in err, err
    assert not (tmp_path / "out").exists()
