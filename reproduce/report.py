"""One self-contained HTML page per table run:

    python -m reproduce.report results/                          # every table*_*.csv there
    python -m reproduce.report results/table1_gpu.csv [--run runs/table1_gpu] [--out FILE]

Writes {results}/{stem}_report.html: the result tables (95% intervals, the paper's values beside
them, proxy labels, any further CSV columns as they come), the figures and training curves (drawn
from the CSVs when missing), the provenance, and an answer browser over the run folder
(records.jsonl + answers/SUITE/WHO.jsonl, looked for in {results}/runs/{stem} and runs/{stem}):
per prompt the teacher's and every method's answer side by side with each judge's verdict in both
orders, filtered by suite, method, judge, outcome and text, 50 prompts a page. The filters live in
the address (#suite=in_domain&outcome=win&q=text), so a filtered view can be linked.

The page loads nothing from the network (inline CSS/JS, images as data URIs, and a content security
policy that forbids any other source). Answers are untrusted text: they travel as escaped JSON and
are shown as text nodes only. When the answers would push the page past MAX_INLINE_BYTES, they go
to {stem}_report.answers.json.gz beside it; the page fetches that file when served over http(s)
(`python -m http.server`) and otherwise asks for it with a file picker, since browsers refuse fetch()
from file:// pages.
"""
from __future__ import annotations

import argparse
import base64
import csv
import gzip
import html
import json
import math
import sys
from pathlib import Path

from dadpo import data
from dadpo.cache import atomic_path
from evals.metrics import word_count
from reproduce.figures import ROOT, _method_order, draw_all, pair_label, result_stems
from reproduce.report_page import CSS, JS

MAX_INLINE_BYTES = 4_500_000
PAGE_SIZE = 50
OUTCOMES = ("win", "tie", "loss", "failed")
# CSV columns shown in the page header or folded into a composite cell; every other column is
# rendered as it comes, so columns added later need no change here
HEADER_COLUMNS = {"setting", "scale", "teacher", "student", "suite", "judge", "judge_model", "proxy"}
COMPOSITE_COLUMNS = {"method", "extension", "beta2", "n", "wins", "ties", "losses", "failed",
                     "paper_metric", "paper_value", "paper_setting"}
PROVENANCE_FIRST = ["git_sha", "note_added_after_run", "started_utc", "wall_seconds", "seconds_outside_stages",
                    "command", "device", "versions", "seed", "config_hash", "judges", "models", "stage_seconds",
                    "reconstructed"]


class ReportError(ValueError):
    """Input a report cannot be built from (one-line message)."""


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def script_json(obj) -> str:
    """JSON that is safe inside <script type="application/json">: no '<', '>' or '&' survive, so
    text such as '</script>' in an answer cannot end the element."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def read_jsonl(path: Path) -> list[dict]:
    try:
        return [row for _, row in data.read_jsonl(path)]
    except data.DataError as e:
        raise ReportError(str(e)) from None


def find_run_dir(results_dir: Path, stem: str) -> Path | None:
    for d in (results_dir / "runs" / stem, ROOT / "runs" / stem):
        if (d / "records.jsonl").is_file() or (d / "answers").is_dir():
            return d
    return None


# ---------------------------------------------------------------- answer browser data

def _rounded(obj):
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else round(obj, 4)
    if isinstance(obj, dict):
        return {str(k): _rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return obj


def _verdict_entry(rec: dict) -> list:
    """[outcome, consistent, failure, student_first verdict, failure, details, teacher_first ...]."""
    out = [rec.get("outcome"), rec.get("consistent"), rec.get("failure")]
    for order in ("student_first", "teacher_first"):
        v = (rec.get("verdicts") or {}).get(order) or {}
        out += [v.get("verdict"), v.get("failure"), _rounded(v.get("details") or {})]
    return out


def answer_data(run_dir: Path, suite_order=()) -> dict:
    """Everything the answer browser shows, joined per suite x prompt:
    {suites, methods, judges: [{name, proxy, model}], prompts: [[suite index, id, prompt,
    reference, teacher answer, teacher words, answers per method, words per method,
    verdicts per method per judge (see _verdict_entry) or null]]}."""
    answers: dict[str, dict[str, dict]] = {}
    for f in sorted((run_dir / "answers").glob("*/*.jsonl")):
        answers.setdefault(f.parent.name, {})[f.stem] = {str(r.get("id")): r for r in read_jsonl(f)}
    rec_path = run_dir / "records.jsonl"
    records = read_jsonl(rec_path) if rec_path.is_file() else []
    if not answers and not records:
        raise ReportError(f"{run_dir}: no records.jsonl and no answers/SUITE/WHO.jsonl")
    judges: dict[str, dict] = {}
    by_key: dict[tuple, dict] = {}
    for r in records:
        name = r.get("judge", "?")
        judges.setdefault(name, {"name": name, "proxy": bool(r.get("proxy")),
                                 "model": (r.get("judge_identity") or {}).get("model", "")})
        by_key[(r.get("suite"), str(r.get("prompt_id")), r.get("student"), name)] = r
    whos = {w for files in answers.values() for w in files} | {r.get("student") for r in records}
    methods = _method_order(whos - {"teacher", None})
    found = list(answers) + sorted({r.get("suite") for r in records} - set(answers))
    suites = [s for s in dict.fromkeys(suite_order) if s in found] + [s for s in found if s not in suite_order]
    ids_of: dict[str, dict[str, None]] = {s: {} for s in suites}
    for s, files in answers.items():
        for who in ["teacher"] + sorted(set(files) - {"teacher"}):
            ids_of[s].update(dict.fromkeys(files.get(who, {})))
    for r in records:
        ids_of[r.get("suite")].setdefault(str(r.get("prompt_id")))
    prompts = []
    for si, s in enumerate(suites):
        files = answers.get(s, {})
        for pid in ids_of[s]:
            rows = {who: files[who].get(pid) for who in files}
            first = next((r for r in rows.values() if r), {})
            teacher = (rows.get("teacher") or {}).get("answer")
            ans = [(rows.get(m) or {}).get("answer") for m in methods]
            verdicts = [[_verdict_entry(by_key[k]) if (k := (s, pid, m, j)) in by_key else None for j in judges]
                        for m in methods]
            prompts.append([si, pid, first.get("prompt"), first.get("reference"), teacher,
                            None if teacher is None else word_count(teacher), ans,
                            [None if a is None else word_count(a) for a in ans], verdicts])
    return {"suites": suites, "methods": methods, "judges": list(judges.values()), "prompts": prompts}


# ---------------------------------------------------------------- static sections

def _num(v: str):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _fmt(v: str, digits: int = 3) -> str:
    x = _num(v)
    if x is None:
        return v or ""
    return f"{int(x)}" if x.is_integer() and abs(x) < 1e15 else f"{x:.{digits}f}"


def _rate_cell(row: dict, c: str) -> str:
    v, lo, hi = row.get(c, ""), row.get(f"{c}_lo", ""), row.get(f"{c}_hi", "")
    if _num(v) is None:
        return f"<td>{esc(v)}</td>"
    interval = (f" <span class=ci>[{_num(lo):.3f}, {_num(hi):.3f}]</span>"
                if _num(lo) is not None and _num(hi) is not None else "")
    return f"<td title='{esc(f'{v} [{lo}, {hi}]')}'>{_num(v):.3f}{interval}</td>"


def _method_cell(row: dict) -> str:
    notes = []
    if str(row.get("extension")) == "True":
        notes.append("extension, not in the paper")
    if _num(row.get("beta2")) is not None:
        notes.append(f"beta2={_num(row['beta2']):g}")
    extra = f" <span class=note>({esc(', '.join(notes))})</span>" if notes else ""
    return f"<th scope=row>{esc(row.get('method'))}{extra}</th>"


def _paper_cells(row: dict) -> str:
    if _num(row.get("paper_value")) is None:
        return "<td></td><td></td>"
    return (f"<td class=paper>{esc(row.get('paper_metric'))} {_fmt(row['paper_value'])}</td>"
            f"<td class=note>{esc(row.get('paper_setting'))}</td>")


def results_tables(rows: list[dict], columns: list[str]) -> str:
    """One table per suite x judge, methods as rows; a column empty in every row is left out."""
    columns = [c for c in columns if any(r.get(c) not in (None, "") for r in rows)]
    triplets = [c for c in columns if f"{c}_lo" in columns and f"{c}_hi" in columns]
    used = HEADER_COLUMNS | COMPOSITE_COLUMNS | set(triplets) | {f"{c}_{s}" for c in triplets for s in ("lo", "hi")}
    other = [c for c in columns if c not in used]
    head = ("<tr><th>method</th><th>n</th><th title='wins / ties / losses (failed)'>W / T / L (failed)</th>"
            + "".join(f"<th>{esc(c)} <span class=ci>[95% CI]</span></th>" for c in triplets)
            + "".join(f"<th>{esc(c)}</th>" for c in other)
            + "<th>paper's value</th><th>paper's setting (its own models)</th></tr>")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r.get("suite", ""), r.get("judge", "")), []).append(r)
    out = []
    for (suite, judge), g in groups.items():
        proxy = any(str(r.get("proxy")) == "True" for r in g)
        label = (" <span class=proxy>PROXY judge: an offline stand-in, not the paper's judge</span>"
                 if proxy else "")
        body = "".join(
            f"<tr>{_method_cell(r)}<td>{esc(r.get('n'))}</td>"
            f"<td>{esc(r.get('wins'))} / {esc(r.get('ties'))} / {esc(r.get('losses'))} ({esc(r.get('failed'))})</td>"
            + "".join(_rate_cell(r, c) for c in triplets)
            + "".join(f"<td>{esc(_fmt(r.get(c, ''), 4))}</td>" for c in other)
            + _paper_cells(r) + "</tr>" for r in g)
        out.append(f"<table class=results data-suite='{esc(suite)}' data-judge='{esc(judge)}'>"
                   f"<caption>{esc(suite)} - judge {esc(judge)} ({esc(g[0].get('judge_model', ''))}){label}"
                   f"</caption><thead>{head}</thead><tbody>{body}</tbody></table>")
    return "\n".join(out)


def render_value(value, depth: int = 0) -> str:
    """Provenance of any shape: dicts as key / value tables (nested ones folded), lists inline."""
    if isinstance(value, dict):
        if not value:
            return "<i>none</i>"
        rows = []
        for k, v in value.items():
            inner = render_value(v, depth + 1)
            if isinstance(v, dict) and depth >= 1 and v:
                inner = f"<details><summary>{len(v)} entries</summary>{inner}</details>"
            rows.append(f"<tr><th>{esc(k)}</th><td>{inner}</td></tr>")
        return f"<table class=kv>{''.join(rows)}</table>"
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            return esc(", ".join("null" if v is None else str(v) for v in value))
        return f"<pre>{esc(json.dumps(value, indent=1))}</pre>"
    if isinstance(value, str) and "\n" in value:
        return f"<pre>{esc(value)}</pre>"
    return esc("null" if value is None else value)


def provenance_section(prov: dict) -> str:
    first = {k: prov[k] for k in PROVENANCE_FIRST if k in prov}
    rest = "".join(f"<details><summary>{esc(k)}</summary>{render_value(v, 1)}</details>"
                   for k, v in prov.items() if k not in first and k != "stage_seconds_last_ran")
    if "stage_seconds_last_ran" in prov:
        rest = (f"<details><summary>stage_seconds_last_ran (cached stages keep the seconds of the run that "
                f"computed them)</summary>{render_value(prov['stage_seconds_last_ran'], 1)}</details>" + rest)
    return render_value(first) + rest


def training_summary(prov: dict) -> str:
    runs = (prov.get("facts") or {}).get("training") or {}
    cols = list(dict.fromkeys(k for r in runs.values() for k, v in r.items() if not isinstance(v, (dict, list))))
    if not runs:
        return ""
    head = "<tr><th>run</th>" + "".join(f"<th>{esc(c)}</th>" for c in cols) + "</tr>"
    body = "".join(f"<tr><th scope=row>{esc(name)}</th>"
                   + "".join(f"<td>{esc(_fmt(str(r.get(c, '')), 4))}</td>" for c in cols) + "</tr>"
                   for name, r in runs.items())
    return f"<table class=training><thead>{head}</thead><tbody>{body}</tbody></table>"


def figures_section(results_dir: Path, stem: str) -> str:
    pngs = sorted(results_dir.glob(f"{stem}_*.png"))
    if not pngs:
        pngs = draw_all(results_dir, stem)
    rank = {"pref": 0, "beta2": 1, "training": 2}
    pngs.sort(key=lambda p: (rank.get(p.stem.removeprefix(stem + "_"), 9), p.name))
    return "\n".join(
        f"<figure id='fig-{esc(p.stem.removeprefix(stem + '_'))}'><img alt='{esc(p.name)}' src='data:image/png;base64,"
        f"{base64.b64encode(p.read_bytes()).decode()}'><figcaption>{esc(p.name)}</figcaption></figure>"
        for p in pngs)


# ---------------------------------------------------------------- the page

def _read_results(csv_path: Path) -> tuple[list[str], list[dict]]:
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except OSError as e:
        raise ReportError(f"cannot read {csv_path}: {e.strerror or e}") from None
    missing = {"method", "suite", "judge"} - set(columns)
    if missing:
        raise ReportError(f"{csv_path}: not a result CSV (no column {', '.join(sorted(missing))})")
    return columns, rows


def _page(stem: str, head: str, sections: list[tuple[str, str, str]], meta: dict, data_json: str) -> str:
    nav = " ".join(f"<a href='#{sid}'>{esc(title)}</a>" for sid, title, _ in sections)
    body = "\n".join(f"<section id='{sid}'><h2>{esc(title)}</h2>{content}</section>"
                     for sid, title, content in sections)
    csp = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
           "connect-src 'self'")
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<meta http-equiv='Content-Security-Policy' content=\"{csp}\">"
            f"<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>{esc(stem)} report</title><style>{CSS}</style></head><body>"
            f"<header>{head}<nav>{nav}</nav></header>{body}"
            f"<script type='application/json' id='report-meta'>{script_json(meta)}</script>"
            f"<script type='application/json' id='report-answers'>{data_json}</script>"
            f"<script>{JS}</script></body></html>")


def _header(stem: str, rows: list[dict], prov: dict) -> str:
    first = rows[0] if rows else {}
    proxies = sorted({r.get("judge", "") for r in rows if str(r.get("proxy")) == "True"})
    head = (f"<h1>{esc(stem)}: {esc(pair_label(first.get('teacher', '?'), first.get('student', '?')))}</h1>"
            f"<p>setting {esc(first.get('setting'))}, scale {esc(first.get('scale'))}, commit "
            f"<code>{esc(prov.get('git_sha', 'unknown'))}</code>, started {esc(prov.get('started_utc', '?'))}</p>")
    if proxies:
        head += (f"<p class=proxy>Proxy results: judge {esc(', '.join(proxies))} is an offline stand-in for "
                 f"the paper's judge; its verdicts are not the paper's measure.</p>")
    if prov.get("reconstructed"):
        head += f"<p class=note>{esc(prov['reconstructed'])}</p>"
    return head


def build_report(results_dir: Path, stem: str, run_dir: Path | None = None, out: Path | None = None) -> Path:
    """Write {results_dir}/{stem}_report.html (or `out`) and, for large runs, its answers sidecar;
    returns the page's path. run_dir: the run folder (records.jsonl, answers/); found by
    find_run_dir when None, and the page says so when there is none."""
    results_dir = Path(results_dir)
    columns, rows = _read_results(results_dir / f"{stem}.csv")
    prov_path = results_dir / f"{stem}.provenance.json"
    try:
        prov = json.loads(prov_path.read_text(encoding="utf-8")) if prov_path.is_file() else {}
    except ValueError as e:
        raise ReportError(f"{prov_path}: not JSON ({e})") from None
    if run_dir is not None and not Path(run_dir).is_dir():
        raise ReportError(f"no run folder {run_dir}")
    run_dir = Path(run_dir) if run_dir is not None else find_run_dir(results_dir, stem)
    data = answer_data(run_dir, [r.get("suite") for r in rows]) if run_dir else None
    out = Path(out) if out else results_dir / f"{stem}_report.html"
    sidecar = out.with_name(out.name.removesuffix(".html") + ".answers.json.gz")

    head = _header(stem, rows, prov)
    tables = (results_tables(rows, columns) + "<p class=note>W / T / L: the student's wins, ties and losses "
              "against the teacher over both answer orders; the paper's value is its number for its own "
              "models, shown for comparison only.</p>")
    meta = {"stem": stem, "page_size": PAGE_SIZE, "outcomes": OUTCOMES, "sidecar": None}
    data_json = "null" if data is None else script_json(data)
    sections = [("tables", "Results", tables), ("figures", "Figures and training curves",
                                                figures_section(results_dir, stem) + training_summary(prov)),
                ("provenance", "Provenance", provenance_section(prov) if prov else "<p>no provenance file</p>")]
    browser = (f"<p class=note>From the run folder {esc(run_dir)}.</p><div id=browser-status></div>"
               "<div id=filters></div><div id=pager></div><div id=cards></div><div id=pager-bottom></div>")
    if data is None:
        browser = (f"<p>No run folder (records.jsonl, answers/) for {esc(stem)} was found in "
                   f"{esc(results_dir / 'runs' / stem)} or {esc(ROOT / 'runs' / stem)}: give one with --run.</p>")
    sections.append(("answers", "Answers and verdicts", browser))
    page = _page(stem, head, sections, meta, data_json)
    if data is not None and len(page.encode("utf-8")) > MAX_INLINE_BYTES:
        with atomic_path(sidecar) as tmp:
            tmp.write_bytes(gzip.compress(json.dumps(data, ensure_ascii=False).encode("utf-8"), mtime=0))
            tmp.chmod(0o644)  # a temp file is private; a report is for reading
        meta.update(sidecar=sidecar.name, sidecar_bytes=sidecar.stat().st_size)
        note = (f"<p id=sidecar-note>The answers of this run ({len(data['prompts'])} prompts x "
                f"{len(data['methods'])} methods) are in {esc(sidecar.name)} ({meta['sidecar_bytes'] / 1e6:.1f} MB, "
                f"gzip) beside this page, which would be too large with them inside.</p>")
        sections[-1] = ("answers", "Answers and verdicts", browser.replace("<div id=browser-status>",
                                                                           "<div id=browser-status>" + note))
        page = _page(stem, head, sections, meta, "null")
    elif sidecar.exists():
        sidecar.unlink()  # a stale one from an earlier, larger build
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
        tmp.chmod(0o644)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reproduce.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", help="a results folder (every table*_*.csv) or one result CSV")
    ap.add_argument("--run", help="the run folder (records.jsonl, answers/); one CSV only")
    ap.add_argument("--out", help="the HTML file to write; one CSV only")
    args = ap.parse_args(argv)
    target = Path(args.target)
    try:
        if target.is_file():
            results_dir, stems = target.parent, [target.name.removesuffix(".csv")]
        elif target.is_dir():
            results_dir, stems = target, result_stems(target)
            if not stems:
                raise ReportError(f"no result CSVs (table*_*.csv) in {target}")
        else:
            raise ReportError(f"no such results folder or CSV: {target}")
        if len(stems) > 1 and (args.run or args.out):
            raise ReportError(f"--run and --out need one CSV, {target} holds {len(stems)}")
        for stem in stems:
            path = build_report(results_dir, stem, Path(args.run) if args.run else None,
                                Path(args.out) if args.out else None)
            side = path.with_name(path.name.removesuffix(".html") + ".answers.json.gz")
            print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)"
                  + (f" + {side.name} ({side.stat().st_size / 1e6:.2f} MB)" if side.exists() else ""))
    except (ReportError, OSError, UnicodeDecodeError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
