"""`python -m evals.run`: answer files in, records + summary out; bad input leaves nothing behind."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evals.records import SUMMARY_COLUMNS
from evals.run import main
from test_evals_reference import save_tiny_bert

REF = "Paris is the capital of France."


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert_run"))


def write(path: Path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def answers(tmp_path):
    d = tmp_path / "answers"
    d.mkdir()
    qs = [("q1", "capital?"), ("q2", "sleep?"), ("q3", "sea?"), ("q4", "no ref")]
    write(d / "teacher.jsonl", [{"id": i, "prompt": p, "answer": "Python functions return values.",
                                 "reference": None if i == "q4" else REF} for i, p in qs])
    write(d / "good.jsonl", [{"id": i, "prompt": p, "answer": REF} for i, p in qs])
    write(d / "bad.jsonl", [{"id": i, "prompt": p, "answer": "The sea is blue and wide."} for i, p in qs])
    return d


def run(*args):
    return main([str(a) for a in args])


def test_end_to_end_reference_judge(answers, bert_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = run("--suite", "in_domain", "--judge", "reference", "--teacher", answers / "teacher.jsonl",
             "--student", f"good={answers / 'good.jsonl'}", "--student", f"bad={answers / 'bad.jsonl'}",
             "--out", out, "--embedder", bert_dir, "--tie-margin", "0.0", "--bootstrap", "1000", "--seed", "3")
    assert rc == 0
    printed = capsys.readouterr().out
    assert "good" in printed and "reference*" in printed
    folder = out / "in_domain" / "reference"
    recs = [json.loads(x) for x in (folder / "records.jsonl").read_text().splitlines()]
    assert len(recs) == 8 and {r["student"] for r in recs} == {"good", "bad"}
    good = [r for r in recs if r["student"] == "good"]
    assert [r["outcome"] for r in good] == ["win", "win", "win", "failed"]
    r0 = good[0]
    assert r0["prompt_id"] == "q1" and r0["suite"] == "in_domain" and r0["teacher"] == "teacher"
    assert set(r0["verdicts"]) == {"student_first", "teacher_first"}
    assert r0["verdicts"]["student_first"]["verdict"] == "A" and r0["verdicts"]["teacher_first"]["verdict"] == "B"
    assert r0["judge_identity"]["name"] == "reference" and r0["proxy"] is True
    assert (r0["student_words"], r0["teacher_words"]) == (6, 4)
    assert "no reference" in good[3]["failure"]
    with open(folder / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["student"] for r in rows] == ["good", "bad"] and list(rows[0]) == list(SUMMARY_COLUMNS)
    g = rows[0]
    assert (g["n"], g["wins"], g["ties"], g["losses"], g["failed"]) == ("3", "3", "0", "0", "1")
    assert float(g["win_rate"]) == 1.0 and float(g["pref_rate"]) == 1.0
    assert g["length_unit"] == "words" and g["bootstrap"] == "1000" and g["bootstrap_seed"] == "3"
    assert json.loads(g["judge_identity"])["tie_margin"] == 0.0
    info = json.loads((folder / "run.json").read_text())
    assert info["comparisons"] == 8 and info["comparisons_per_s"] > 0
    # a second run is served from the verdict cache
    rc = run("--suite", "in_domain", "--judge", "reference", "--answers", answers, "--out", tmp_path / "out2",
             "--embedder", bert_dir, "--tie-margin", "0.0")
    assert rc == 0
    info = json.loads((tmp_path / "out2" / "in_domain" / "reference" / "run.json").read_text())
    assert info["judge_stats"]["cache_hits"] == 12  # 2 students x 3 referenced prompts x 2 orders


@pytest.mark.parametrize("mutate,message", [
    (lambda d: write(d / "bad.jsonl", ['{"id": "q1", "prompt": "capital?"']), "not valid JSON"),
    (lambda d: write(d / "bad.jsonl", [{"id": "q1", "prompt": "capital?"}]), "missing field 'answer'"),
    (lambda d: write(d / "bad.jsonl", [{"id": "q1", "prompt": "capital?", "answer": "x"}]), "ids differ"),
    (lambda d: write(d / "bad.jsonl", [{"id": i, "prompt": "other", "answer": "x"} for i in ("q1", "q2", "q3", "q4")]),
     "prompt of id 'q1' differs"),
    (lambda d: write(d / "bad.jsonl", [{"id": "q1", "prompt": "capital?", "answer": "x"}] * 2), "duplicate id"),
    (lambda d: write(d / "bad.jsonl", [{"id": "q1", "prompt": "capital?", "answer": "x", "suite": "mt_bench"}]),
     "suite 'mt_bench'"),
    (lambda d: (d / "bad.jsonl").write_bytes(b"\xff\xfe"), "not UTF-8"),
    (lambda d: (d / "bad.jsonl").unlink(), "not found"),
])
def test_bad_input_is_one_line_and_writes_nothing(answers, bert_dir, tmp_path, capsys, mutate, message):
    mutate(answers)
    out = tmp_path / "out"
    rc = run("--suite", "in_domain", "--judge", "reference", "--teacher", answers / "teacher.jsonl",
             "--student", f"good={answers / 'good.jsonl'}", "--student", f"bad={answers / 'bad.jsonl'}",
             "--out", out, "--embedder", bert_dir)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and "\n" not in err and err.startswith("evals.run: error:")
    assert not out.exists()


def test_bad_arguments_and_unloadable_judge(answers, tmp_path, capsys):
    assert run("--suite", "nope", "--out", tmp_path / "o") == 2
    assert "invalid choice" in capsys.readouterr().err
    assert run("--suite", "in_domain", "--answers", answers, "--out", tmp_path / "o", "--bootstrap", "50") == 2
    assert "1000" in capsys.readouterr().err
    rc = run("--suite", "in_domain", "--judge", "reference", "--answers", answers, "--out", tmp_path / "o",
             "--embedder", tmp_path / "missing-model")
    err = capsys.readouterr().err.strip()
    assert rc == 3 and "cannot load" in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_module_entry_point(tmp_path):
    p = subprocess.run([sys.executable, "-m", "evals.run", "--suite", "in_domain", "--out", str(tmp_path),
                        "--teacher", str(tmp_path / "none.jsonl"), "--student", "s=x.jsonl"],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "not found" in p.stderr
