"""Judge students against the teacher on one prompt suite.

    python -m evals.run --suite in_domain --judge reference \\
        --teacher answers/teacher.jsonl --student dadpo=answers/dadpo.jsonl --student ddpo=answers/ddpo.jsonl \\
        --out runs/eval

    python -m evals.run --suite mt_bench --judge api --answers answers/   # teacher.jsonl + one file per student

Answer files are JSONL, one object per prompt: {"id", "prompt", "answer", "reference"?, "suite"?}.
Every student file must hold exactly the teacher file's ids with the same prompts. For each judge the
command writes OUT/<suite>/<judge>/records.jsonl (one record per student x prompt), summary.csv (one
row per student) and run.json (judge identity, spend, throughput), each atomically and only after all
judging succeeded, and prints a table. Bad input: a one-line error and exit status 2; a judge that
cannot be built, a verdict cache that cannot be used, or a judge whose every call failed: exit status 3.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from dadpo.cache import atomic_write_text, cache_root
from evals.judges import JUDGES, JudgeError, VerdictCache, make_judge
from evals.judging import judge_all
from evals.protocol import Pair
from evals.records import write_csv, write_jsonl


class InputError(ValueError):
    """Bad command-line input or answer file; the message is one line."""


@dataclass(frozen=True)
class Answer:
    id: str
    prompt: str
    answer: str
    reference: str | None


def load_answers(path: Path, suite: str | None = None) -> dict[str, Answer]:
    """Answers by id, in file order; every problem is an InputError naming file and line."""
    if not path.is_file():
        raise InputError(f"answer file not found: {path}")
    out: dict[str, Answer] = {}
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines: U+2028 may sit in a string
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    for ln, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{ln}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object")
        for k in ("id", "prompt", "answer"):
            if k not in row:
                raise InputError(f"{where}: missing field {k!r}")
        if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool):
            raise InputError(f"{where}: 'id' must be a string or an integer")
        for k in ("prompt", "answer"):
            if not isinstance(row[k], str):
                raise InputError(f"{where}: {k!r} must be a string")
        ref = row.get("reference")
        if ref is not None and not isinstance(ref, str):
            raise InputError(f"{where}: 'reference' must be a string or null")
        if suite is not None and row.get("suite") not in (None, suite):
            raise InputError(f"{where}: suite {row['suite']!r} but --suite is {suite!r}")
        key = str(row["id"])
        if key in out:
            raise InputError(f"{where}: duplicate id {key!r}")
        out[key] = Answer(key, row["prompt"], row["answer"], ref)
    if not out:
        raise InputError(f"{path}: no answers")
    return out


def build_pairs(teacher: dict[str, Answer], student: dict[str, Answer], name: str) -> list[Pair]:
    missing, extra = teacher.keys() - student.keys(), student.keys() - teacher.keys()
    if missing or extra:
        raise InputError(f"student {name!r}: ids differ from the teacher's ({len(missing)} missing, e.g. "
                         f"{sorted(missing)[:3]}; {len(extra)} extra, e.g. {sorted(extra)[:3]})")
    pairs = []
    for k, t in teacher.items():
        s = student[k]
        if s.prompt != t.prompt:
            raise InputError(f"student {name!r}: prompt of id {k!r} differs from the teacher's")
        pairs.append(Pair(k, t.prompt, s.answer, t.answer, t.reference if t.reference is not None else s.reference))
    return pairs


def _named(spec: str, base: Path | None) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = Path(spec).stem, spec
    if not name or not path:
        raise InputError(f"--student/--teacher {spec!r}: expected NAME=PATH or PATH")
    p = Path(path)
    return name, (base / p if base is not None and not p.is_absolute() else p)


def resolve_inputs(args) -> tuple[tuple[str, Path], list[tuple[str, Path]]]:
    base = Path(args.answers) if args.answers else None
    if base is not None and not base.is_dir():
        raise InputError(f"--answers {base}: not a folder")
    if args.teacher:
        teacher = _named(args.teacher, base)
    elif base is not None:
        teacher = ("teacher", base / "teacher.jsonl")
    else:
        raise InputError("give --teacher PATH (or --answers DIR holding teacher.jsonl)")
    students = [_named(s, base) for s in args.student or []]
    if not students and base is not None:
        students = [(p.stem, p) for p in sorted(base.glob("*.jsonl")) if p.resolve() != teacher[1].resolve()]
    if not students:
        raise InputError("no student answers: give --student NAME=PATH (or --answers DIR with student files)")
    names = [n for n, _ in students]
    if len(set(names)) != len(names) or teacher[0] in names:
        raise InputError(f"student names must be unique and differ from the teacher's: {names}")
    return teacher, students


def parse_args(argv=None):
    from dadpo.config import SUITES

    class Parser(argparse.ArgumentParser):
        def error(self, message):  # one line, not usage + message
            raise InputError(message)

    p = Parser(prog="python -m evals.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", required=True, choices=SUITES)
    p.add_argument("--judge", action="append", choices=JUDGES, help="repeatable; default: the config's judges")
    p.add_argument("--teacher", help="PATH or NAME=PATH of the teacher's answers")
    p.add_argument("--student", action="append", help="NAME=PATH (repeatable)")
    p.add_argument("--answers", help="folder: base for relative paths; teacher.jsonl + students by default")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", help="experiment YAML whose eval section gives the defaults")
    p.add_argument("--limit", type=int, help="first N teacher prompts only")
    p.add_argument("--bootstrap", type=int)
    p.add_argument("--seed", type=int, help="bootstrap seed")
    p.add_argument("--cache", help="verdict cache (SQLite); default <cache_root>/judges/verdicts.sqlite")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--device")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--embedder", help="reference judge: sentence-embedding model")
    p.add_argument("--tie-margin", type=float, help="reference judge: cosine difference counted as a tie")
    p.add_argument("--local-model", help="local judge: chat model")
    p.add_argument("--pairrm-model", help="pairrm judge: checkpoint (folder or hub id)")
    p.add_argument("--api-model")
    p.add_argument("--api-base-url")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="name of the env var holding the key")
    p.add_argument("--concurrency", type=int, help="api judge: requests in flight")
    return p.parse_args(argv)


def _judge_kwargs(name: str, args) -> dict:
    kw = {}
    if name in ("reference", "local", "pairrm"):
        kw.update({k: v for k, v in (("device", args.device), ("batch_size", args.batch_size)) if v is not None})
    opts = {"reference": (("embedder", args.embedder), ("tie_margin", args.tie_margin)),
            "local": (("model", args.local_model),),
            "pairrm": (("model", args.pairrm_model),),
            "api": (("model", args.api_model), ("base_url", args.api_base_url), ("api_key_env", args.api_key_env),
                    ("concurrency", args.concurrency))}[name]
    kw.update({k: v for k, v in opts if v is not None})
    return kw


def fmt_rate(row: dict, k: str) -> str:
    v, lo, hi = row[k], row[f"{k}_lo"], row[f"{k}_hi"]
    return "n/a" if v != v else f"{100 * v:6.1f} [{100 * lo:5.1f},{100 * hi:5.1f}]"


def table(rows: list[dict]) -> str:
    head = f"{'student':<14} {'judge':<10} {'n':>4} {'W/T/L/fail':>13}  {'win%':<21} {'adj win%':<21} " \
           f"{'pref%':<21} {'A-pos':>5} {'len s/t (words)':>16}"
    lines = [head, "-" * len(head)]
    for r in rows:
        wtl = f"{r['wins']}/{r['ties']}/{r['losses']}/{r['failed']}"
        pos = r["first_position_win_share"]
        lines.append(f"{r['student'][:14]:<14} {r['judge'] + ('*' if r['proxy'] else ''):<10} {r['n']:>4} {wtl:>13}  "
                     f"{fmt_rate(r, 'win_rate'):<21} {fmt_rate(r, 'adj_win_rate'):<21} "
                     f"{fmt_rate(r, 'pref_rate'):<21} {'n/a' if pos != pos else f'{pos:.2f}':>5} "
                     f"{r['student_len']:>7.1f}/{r['teacher_len']:<7.1f}")
    lines.append("* offline proxy judge; intervals: 95% paired bootstrap over prompts; A-pos: share of decisive "
                 "single-order verdicts won by position A")
    return "\n".join(lines)


def run(args) -> list[dict]:
    from dadpo.config import EvalConfig, load_config

    cfg = load_config(args.config).eval if args.config else EvalConfig()
    judges = args.judge or list(cfg.judges)
    n_boot = args.bootstrap if args.bootstrap is not None else cfg.bootstrap
    seed = args.seed if args.seed is not None else cfg.bootstrap_seed
    if n_boot < 1000:
        raise InputError(f"--bootstrap {n_boot}: at least 1000 resamples")
    for opt in ("limit", "batch_size", "concurrency"):  # found now, not inside a judge after loading models
        if getattr(args, opt) is not None and getattr(args, opt) < 1:
            raise InputError(f"--{opt.replace('_', '-')} must be >= 1, got {getattr(args, opt)}")
    out = Path(args.out)
    if out.exists() and not out.is_dir() or (out / args.suite).exists() and not (out / args.suite).is_dir():
        raise InputError(f"--out {out}: not a folder")
    existing = next(p for p in [out, *out.parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: {existing} is not a writable folder")
    (t_name, t_path), students = resolve_inputs(args)
    teacher = load_answers(t_path, args.suite)
    if args.limit:
        teacher = dict(list(teacher.items())[:args.limit])
    pairs = {}
    for name, path in students:
        ans = load_answers(path, args.suite)
        if args.limit:
            ans = {k: v for k, v in ans.items() if k in teacher}
        pairs[name] = build_pairs(teacher, ans, name)

    cache = None if args.no_cache else VerdictCache(args.cache or cache_root() / "judges" / "verdicts.sqlite")
    built = [make_judge(j, cfg, cache=cache, **_judge_kwargs(j, args)) for j in judges]  # all, before any work
    out_root = Path(args.out) / args.suite
    from evals.judges.api import scrub_secrets

    options = scrub_secrets({k: v for k, v in vars(args).items() if v is not None})
    answers: dict = {"items": [], t_name: []}
    for name, ps in pairs.items():
        answers[name] = [p.student for p in ps]
    first = next(iter(pairs.values()))
    answers["items"] = [{"id": p.id, "prompt": p.prompt, "reference": p.reference} for p in first]
    answers[t_name] = [p.teacher for p in first]
    runs = judge_all(built, {args.suite: answers}, list(pairs), t_name, n_boot, seed)  # judged first: a
    results = []  # failure halfway writes nothing at all
    for judge, run in zip(built, runs):
        run_info = {"suite": args.suite, "judge_identity": run.identity, "teacher": str(t_path),
                    "students": {n: str(p) for n, p in students}, "judge_stats": run.facts["stats"],
                    "options": options, **{k: v for k, v in run.facts.items() if k not in ("identity", "stats")}}
        results.append((out_root / judge.name, run.records, run.rows, run_info))
        judge.close()
    for folder, records, rows, run_info in results:
        write_jsonl(folder / "records.jsonl", records)
        atomic_write_text(folder / "run.json", json.dumps(run_info, indent=2, sort_keys=True, default=str))
        write_csv(folder / "summary.csv", rows)  # last: a summary exists only beside its records
    return [r for _, _, rows, _ in results for r in rows]


def main(argv=None) -> int:
    from dadpo.config import ConfigError

    try:
        args = parse_args(argv)
        rows = run(args)
    except (InputError, ConfigError) as e:
        print(f"evals.run: error: {e}", file=sys.stderr)
        return 2
    except JudgeError as e:
        print(f"evals.run: error: {e}", file=sys.stderr)
        return 3
    print(table(rows))
    print(f"written under {Path(args.out) / args.suite}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
