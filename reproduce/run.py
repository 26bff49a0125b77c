"""Run one table of the paper end to end and write its tidy CSV and provenance.

    python -m reproduce.table1 [--scale smoke|default|gpu|paper] [--set section.key=value ...]

Outputs (under --out, default results/):
  {setting}_{scale}.csv                 one row per method x suite x judge (+ the paper's value)
  {setting}_{scale}_training.csv        per-step training logs of every trained method
  {setting}_{scale}.provenance.json     git sha, versions, device, seeds, config + hash, judges,
                                        wall time per stage, models, pruning and cache facts
  {setting}_{scale}_*.png               figures (preference rates, beta2 sweep, training curves)
  {setting}_{scale}_report.html         one self-contained page: tables, figures, provenance and a
                                        browser of every answer and verdict
  runs/{setting}_{scale}/records.jsonl  every comparison with both raw verdicts (not committed)
  runs/{setting}_{scale}/answers/SUITE/MODEL.jsonl  answers, ready for `python -m evals.run`
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from dadpo.assets import asset_facts
from dadpo.cache import Cache, atomic_write_text, cache_root
from dadpo.config import ROWS, SCALES, ConfigError, config_path, load_config
from dadpo.methods import METHODS
from evals.judges import VerdictCache, make_judge
from evals.judging import judge_all
from evals.agreement import AGREEMENT_COLUMNS
from evals.records import write_jsonl
from reproduce.evidence import (DIFFERENCE_COLUMNS, Trained, agreement_rows, answer_measures, difference_rows,
                                lc_columns, seed_rows)
from evals.judges.api import scrub_secrets
from reproduce.figures import draw_all
from reproduce.provenance import ROOT, device_facts, git_sha, public_paths, relative, versions
from reproduce.report import build_report
from reproduce.tables import (RESULT_COLUMNS, TRAINING_COLUMNS, print_table, result_rows, training_rows,
                              write_csv)


def earlier_provenance(prov_path: Path, cfg) -> dict:
    """The provenance an earlier run of this same config left at `prov_path` ({} if none)."""
    try:
        prev = json.loads(prov_path.read_text())
    except (OSError, ValueError):
        return {}
    return prev if prev.get("config_hash") == cfg.fingerprint() else {}


def with_journal(prev: dict, journal: dict) -> dict:
    """The earlier provenance updated with the cache's stage journal (dadpo.pipeline), which also holds
    the stages of a run killed before it wrote any provenance."""
    facts = dict(prev.get("facts", {}))
    for key in ("stages", "generation"):
        facts[key] = {**facts.get(key, {}), **journal.get(key, {})}
    seconds = {**prev.get("stage_seconds_last_ran", prev.get("stage_seconds", {})),
               **{name: st["seconds"] for name, st in journal.get("stages", {}).items()}}
    return {"facts": facts, "stage_seconds_last_ran": seconds}


def keep_earlier(prev: dict, timings: dict, facts: dict) -> tuple[dict, dict]:
    """Stages a re-run finds cached do not run, so they report no seconds, memory or generation facts:
    keep what the run that computed them recorded (a run split over several processes, e.g. one
    killed at a time limit and started again, so reports every stage). Returns
    (stage_seconds_last_ran, facts); facts["stages_measured_earlier"] names the stages kept."""
    seconds = {**prev.get("stage_seconds_last_ran", prev.get("stage_seconds", {})), **timings}
    earlier = prev.get("facts", {})
    out = dict(facts)
    for key in ("generation", "stages", "training"):
        merged = {**earlier.get(key, {}), **facts.get(key, {})}
        if merged:
            out[key] = merged
    kept = sorted(set(earlier.get("stages", {})) - set(facts.get("stages", {})))
    if kept:
        out["stages_measured_earlier"] = kept
    return seconds, out


def check_writable(out: Path) -> None:
    """--out must be a folder this process can create or write: found now, not after hours of work."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: not a folder")
    existing = next(p for p in [out, *out.parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: {existing} is not writable")


def parse_args(setting: str, argv=None):
    scales = [s for s in SCALES if config_path(setting, s).is_file()]

    class Parser(argparse.ArgumentParser):
        def error(self, message):  # one line and exit 2, like every other bad input
            self.exit(2, f"error: {message}\n")

    ap = Parser(prog=f"python -m reproduce.{setting}", formatter_class=argparse.RawDescriptionHelpFormatter,
                description=__doc__.replace("reproduce.table1", f"reproduce.{setting}")
                .replace("smoke|default|gpu|paper", "|".join(scales)))
    ap.add_argument("--scale", default="default", choices=scales,
                    help="default: the embedded offline setting (CPU, packaged models)")
    ap.add_argument("--config", help="a YAML config instead of the packaged one for --scale")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--methods", nargs="+", help=f"rows to run (default: the config's; known: {', '.join(ROWS)})")
    ap.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                    help="train every method once per seed; tables show the mean over seeds (config key seeds)")
    ap.add_argument("--out", default=str(ROOT / "results"), help="folder for the CSVs, provenance and runs/")
    ap.add_argument("--cache", help="cache folder (default: $DADPO_CACHE or ~/.cache/dadpo)")
    return ap.parse_args(argv)


def main(setting: str, argv=None) -> int:
    args = parse_args(setting, argv)
    try:
        overrides = list(args.set) + ([f"methods=[{','.join(args.methods)}]"] if args.methods else [])
        overrides += [f"seeds=[{','.join(map(str, args.seeds))}]"] if args.seeds else []
        cfg = load_config(args.config, overrides, setting=setting, scale=args.scale)
        if cfg.setting != setting:
            raise ConfigError(f"config: setting is {cfg.setting!r}, but this is reproduce.{setting}")
        out = Path(args.out)
        check_writable(out)
        quiet_libraries()
        return run(cfg, out, Cache(args.cache or cache_root()))
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError, OSError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2


def plan(cfg) -> list[Trained]:
    """Every model a table run evaluates: the untrained student, each method once per training seed,
    the beta2 sweep (first seed only)."""
    seeds = list(cfg.seeds) or [cfg.seed]
    out = []
    for row in list(cfg.methods) + list(cfg.extensions):
        if row == "student":
            out.append(Trained("student", "student"))
            continue
        for s in seeds:
            out.append(Trained(row if s == cfg.seed else f"{row}@seed={s}", row, s,
                               cfg.objective.beta2 if row == "dadpo" else None))
    out += [Trained(f"dadpo_beta2={b:g}", "dadpo", seeds[0], b, sweep=True) for b in cfg.beta2_sweep]
    return out


def expected_stages(cfg, names: dict[str, Trained]) -> int:
    """How many stages a run from an empty cache has (shown as "stage 7/31"; cached stages do not run)."""
    seeds = {t.seed for t in names.values() if t.seed is not None}
    trained = [t for t in names.values() if t.method != "student"]
    scores = {(kind, None if kind == "topk" else t.seed) for t in trained for kind in METHODS[t.method].scores}
    pairs = any("rejected" in METHODS[t.method].answers for t in trained)
    return (2 + cfg.models.prune.enabled + 1 + len(seeds) * (1 + pairs) + len(scores)
            + len([t for t in trained if t.method != "sft" or t.sweep]) + 2 * (len(names) + 1) + len(cfg.eval.judges)
            + 1)  # the summary


def quiet_libraries() -> None:
    """One readable progress display: the suite's stage lines and bars, no library bars, one-line warnings."""
    import datasets
    import transformers

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    # formatwarning, not showwarning: a replaced showwarning would bypass catch_warnings(record=True)
    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"


def run(cfg, out: Path, cache: Cache) -> int:
    from dadpo.pipeline import Pipeline
    from dadpo.trainer import check_tracker

    t0 = time.time()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    sha = git_sha()  # before this run writes its own (tracked) results, which would read as "dirty"
    # judges are built before any work: a judge that cannot run fails the run in seconds, not hours
    verdicts = VerdictCache(cache.root / "judges" / "verdicts.sqlite")
    judges = [make_judge(j, cfg.eval, cache=verdicts) for j in cfg.eval.judges]
    check_tracker(cfg.train.log_with)
    pipe = Pipeline(cfg, cache)
    names = {t.name: t for t in plan(cfg)}
    pipe.stages.expected = expected_stages(cfg, names)
    models = {t.name: pipe.trained(t.method, beta2=t.beta2 if t.sweep else None, seed=t.seed)
              for t in names.values()}
    answers = pipe.eval_answers(models)
    nll = pipe.measures(models, answers)
    runs = []
    for judge in judges:
        with pipe.stage(f"judge:{judge.name}"):
            runs += judge_all([judge], answers, list(models), "teacher", cfg.eval.bootstrap, cfg.eval.bootstrap_seed)
        judge.close()
    # intervals, tables and the files' contents: on a GPU-scale run (~10,000 comparisons x bootstraps) this is
    # a stage of its own, so the clock covers it
    with pipe.stage("summary"):
        records = [r for run in runs for r in run.records]
        measures = {name: answer_measures(answers, name, pipe.eval_lengths.get(name), cfg.eval.max_new_tokens, nll)
                    for name in ["teacher", *models]}
        lc = lc_columns(records, cfg.eval.bootstrap, cfg.eval.bootstrap_seed)
        rows = result_rows(cfg, [r for run in runs for r in run.rows], names, measures, lc)
        rows += seed_rows(rows, records, names, cfg.eval.bootstrap, cfg.eval.bootstrap_seed)
        stem = f"{cfg.setting}_{cfg.scale}" + ("_random" if pipe.shape_run else "")
        run_dir = out / "runs" / stem
        # every output is computed before the first is written: a failure here leaves earlier files as they were
        answer_files = {run_dir / "answers" / suite / f"{who}.jsonl":
                        [{"id": it["id"], "prompt": it["prompt"], "answer": a, "reference": it["reference"],
                          "suite": suite} for it, a in zip(ans["items"], ans[who])]
                        for suite, ans in answers.items() for who in ans if who != "items"}  # evals.run's format
        extras = [(out / f"{stem}_{kind}.csv", extra, columns) for kind, extra, columns in (
            ("differences", difference_rows(records, names, cfg.eval.bootstrap, cfg.eval.bootstrap_seed),
             DIFFERENCE_COLUMNS), ("agreement", agreement_rows(records), AGREEMENT_COLUMNS)) if extra]
        training = training_rows(pipe.training_logs)
    prov_path = out / f"{stem}.provenance.json"
    facts = {**pipe.run_facts(), "judges": {run.judge: run.facts for run in runs}}
    seconds, facts = keep_earlier(with_journal(earlier_provenance(prov_path, cfg), pipe.earlier), pipe.timings, facts)
    provenance = public_paths(scrub_secrets({
        "command": [relative(sys.argv[0])] + sys.argv[1:], "started_utc": started,
        "wall_seconds": round(time.time() - t0, 1), "seconds_outside_stages": pipe.stages.outside(),
        "git_sha": sha, "versions": versions(),
        "device": device_facts(cfg), "seed": cfg.seed, "seeds": list(cfg.seeds) or [cfg.seed],
        "config_hash": cfg.fingerprint(), "config": cfg.to_dict(),
        "stage_seconds": pipe.timings, "stage_seconds_last_ran": seconds, "facts": facts,
        "judges": {run.judge: run.identity for run in runs},
        "models": {k: pipe.fp(v) for k, v in models.items()},
        # a shape run loads no weights of these specs (its models are in "models"): nothing to resolve
        "assets": {} if pipe.shape_run else {spec: asset_facts(spec)
                                             for spec in dict.fromkeys([cfg.models.teacher, cfg.models.student])},
        "shape_run": pipe.shape_run,
        "reconstructed": "daDPO objective and several settings are reconstructions (docs/method.md#reconstructions); "
                         "offline judges are proxies; default models are small stand-ins"
                         + ("; RANDOM WEIGHTS: a shape run, its quality numbers mean nothing" if pipe.shape_run else "."),
    }))
    prov_text = json.dumps(provenance, indent=2, sort_keys=True, default=str)
    write_jsonl(run_dir / "records.jsonl", records)
    for path, rows_of in answer_files.items():
        write_jsonl(path, rows_of)
    written = [out / f"{stem}_training.csv"]
    write_csv(written[0], training, TRAINING_COLUMNS)
    for path, extra, columns in extras:
        write_csv(path, extra, columns)
        written.append(path)
    atomic_write_text(prov_path, prov_text)
    write_csv(out / f"{stem}.csv", rows, RESULT_COLUMNS)  # the CSV exists only with its provenance
    written = [out / f"{stem}.csv", prov_path] + written
    written += draw_all(out, stem)
    written.append(build_report(out, stem, run_dir))
    print_table(rows, pipe.shape_run)
    in_stages = sum(pipe.timings.values())
    writing = pipe.stages.outside()["after the last stage"]
    print(f"done in {time.time() - t0:.0f}s ({in_stages:.0f}s in stages, {writing:.0f}s writing after them); "
          f"wrote ({len(rows)} result rows):")
    for path in written + [run_dir / "records.jsonl", run_dir / "answers"]:
        print(f"  {path}")
    return 0
