"""The HTML report (reproduce.report) and the figures it embeds (reproduce.figures).

Every test builds a tiny synthetic run itself (result CSV, training CSV, provenance, records.jsonl,
answers/). The browser tests open the page in headless Chromium through file:// (one through a local
http.server, where the page fetches its answers sidecar by itself) and check what it shows after
filtering (DOM and a screenshot); they skip where no Chromium is installed. To run them:

    apt-get install -y chromium chromium-driver      # Debian; or point $CHROMIUM at a binary
    PYTHONPATH=$PWD python -m pytest -q tests/test_report.py

Chromium is driven with --dump-dom and, for interaction, the DevTools protocol over
--remote-debugging-pipe (JSON messages on file descriptors 3 and 4: no extra Python package).
"""
from __future__ import annotations

import base64
import functools
import gzip
import http.server
import io
import json
import os
import select
import shutil
import subprocess
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from evals.records import write_jsonl
from reproduce import figures, report
from reproduce.run import RESULT_COLUMNS, TRAINING_COLUMNS

STEM = "table1_tiny"
HOSTILE = ('</script><script>window.pwned=1</script><img src=x onerror="window.pwned=2">'
           '<b>bold</b> & http://evil.example/a.png'
           ' \u2028 \x85 \x1c \u2029')  # characters str.splitlines() splits on (random-weight models write them)
# (suite, judge, proxy) -> method -> outcome per prompt
OUTCOMES = {
    ("in_domain", "reference", True): {"sft": ["win", "loss", "tie"], "dadpo": ["win", "win", "loss"]},
    ("in_domain", "local", False): {"sft": ["loss", "loss", "loss"], "dadpo": ["loss", "tie", "win"]},
    ("mt_bench", "reference", True): {"sft": ["failed", "loss"], "dadpo": ["tie", "win"]},
}
PROMPTS = {"in_domain": ["a1", "a2", "a3"], "mt_bench": ["b1", "b2"]}
EXTRA_COLUMNS = ["seed", "lc_win_rate", "lc_win_rate_lo", "lc_win_rate_hi"]  # columns a later CSV may add


def answer_of(who: str, suite: str, pid: str) -> str:
    if (who, pid) == ("dadpo", "a2"):
        return HOSTILE
    return f"{who} answers {pid} in {suite} " + "word " * (len(who) + int(pid[1]))


def verdict_pair(outcome: str) -> dict:
    """Both orders' raw verdicts for a student outcome (A is the student when the student comes first)."""
    first, second = {"win": ("A", "B"), "loss": ("B", "A"), "tie": ("tie", "tie"), "failed": (None, None)}[outcome]
    fail = "judge timed out" if outcome == "failed" else None
    return {"student_first": {"verdict": first, "failure": fail, "details": {"sim_a": 0.81234567, "sim_b": 0.5}},
            "teacher_first": {"verdict": second, "failure": fail, "details": {"sim_a": 0.5, "sim_b": 0.81234567}}}


def write_run(root: Path, run_dir: Path | None = None) -> tuple[Path, Path]:
    """results/{STEM}.csv, _training.csv, .provenance.json and a run folder; (results, run_dir)."""
    results = root / "results"
    run_dir = run_dir or results / "runs" / STEM
    records, rows = [], []
    for (suite, judge, proxy), per_method in OUTCOMES.items():
        for method, outs in per_method.items():
            for pid, outcome in zip(PROMPTS[suite], outs):
                records.append({"suite": suite, "prompt_id": pid, "student": method, "teacher": "teacher",
                                "judge": judge, "judge_identity": {"name": judge, "model": f"offline:{judge}-m"},
                                "proxy": proxy, "outcome": outcome, "consistent": None if outcome == "failed" else True,
                                "failure": "judge timed out" if outcome == "failed" else None,
                                "verdicts": verdict_pair(outcome), "student_words": 3, "teacher_words": 4})
            n = len(outs)
            w, t, l = (outs.count(o) for o in ("win", "tie", "loss"))
            rows.append({"setting": "table1", "scale": "tiny", "method": method, "extension": False,
                         "beta2": 0.1 if method == "dadpo" else "", "suite": suite, "judge": judge,
                         "judge_model": f"offline:{judge}-m", "proxy": proxy, "n": n, "wins": w, "ties": t,
                         "losses": l, "failed": outs.count("failed"), "win_rate": w / n, "win_rate_lo": 0.0,
                         "win_rate_hi": 1.0, "pref_rate": (w - l) / n, "pref_rate_lo": -1.0, "pref_rate_hi": 1.0,
                         "student_len": 3.0, "teacher_len": 4.0, "teacher": "offline:smollm2-135m-instruct",
                         "student": "offline:smollm2-135m-instruct pruned 20%", "seed": 7, "lc_win_rate": 0.25,
                         "lc_win_rate_lo": 0.125, "lc_win_rate_hi": 0.5,
                         **({"paper_metric": "pref_rate", "paper_value": -0.073, "paper_setting": "paper's own pair"}
                            if (method, suite) == ("dadpo", "in_domain") else {})})
    results.mkdir(parents=True)
    pd.DataFrame(rows, columns=RESULT_COLUMNS + EXTRA_COLUMNS).to_csv(results / f"{STEM}.csv", index=False)
    steps = [{"method": m, "step": s, "loss": 2.0 - 0.1 * s + (6 if m == "dadpo" else 0),
              "loss_at_ref": 2.0 + (6 if m == "dadpo" else 0), "rewards/margins": 0.1 * s,
              "dadpo/teacher_term": 1.0 if m == "dadpo" else None, "dadpo/margin_ref": 0.05 * s if m == "dadpo" else None}
             for m in ("ddpo", "dadpo") for s in range(1, 6)]
    pd.DataFrame(steps, columns=TRAINING_COLUMNS).to_csv(results / f"{STEM}_training.csv", index=False)
    (results / f"{STEM}.provenance.json").write_text(json.dumps({
        "git_sha": "abc123def", "versions": {"torch": "2.13.0"}, "device": {"cuda": False},
        "config": {"seed": 0, "objective": {"beta2": 0.1}}, "stage_seconds": {"train:dadpo": 1.5},
        "facts": {"training": {"dadpo": {"steps": 5, "final_loss": 7.5, "extra": {}}}},
        "reconstructed": "reconstruction note"}))
    for suite, ids in PROMPTS.items():
        for who in ("teacher", "sft", "dadpo"):
            folder = run_dir / "answers" / suite
            folder.mkdir(parents=True, exist_ok=True)
            write_jsonl(folder / f"{who}.jsonl", [  # the run's writer: non-ASCII characters stay raw
                {"id": pid, "prompt": f"prompt {pid} </script>", "answer": answer_of(who, suite, pid),
                 "reference": None, "suite": suite} for pid in ids])
    (run_dir / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return results, run_dir


def expected_cards(method: str | None = None, outcome: str | None = None, suite: str | None = None) -> int:
    hits = {(s, pid) for (s, _, _), per in OUTCOMES.items() if suite in (None, s)
            for m, outs in per.items() if method in (None, m)
            for pid, o in zip(PROMPTS[s], outs) if outcome in (None, o)}
    return len(hits)


class Page(HTMLParser):
    """Tags with attributes, script bodies, table rows and text of an HTML page."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags, self.scripts, self.tables, self.text = [], [], [], []
        self._script = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "script":
            self._script = attrs.get("id", "")
        if tag == "table":
            self.tables.append({"attrs": attrs, "rows": 0, "text": []})
        if tag == "tr" and self.tables:
            self.tables[-1]["rows"] += 1

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = None

    def handle_data(self, data):
        if self._script is not None:
            self.scripts.append((self._script, data))
        else:
            self.text.append(data)
            if self.tables:
                self.tables[-1]["text"].append(data)

    def script(self, sid: str):
        return json.loads(next(d for s, d in self.scripts if s == sid))

    def find(self, tag, **attrs):
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())]


def test_report_shows_tables_figures_provenance_and_answers(tmp_path):
    results, run_dir = write_run(tmp_path)
    path = report.build_report(results, STEM, None)
    assert path == results / f"{STEM}_report.html"
    page = Page(path.read_text())
    text = " ".join(page.text)
    tables = [t for t in page.tables if t["attrs"].get("class") == "results"]
    assert [(t["attrs"]["data-suite"], t["attrs"]["data-judge"]) for t in tables] == \
        [("in_domain", "reference"), ("in_domain", "local"), ("mt_bench", "reference")]
    assert all(t["rows"] == 1 + 2 for t in tables)  # header + sft, dadpo
    first = " ".join(" ".join(tables[0]["text"]).split())
    assert "PROXY judge" in first and "PROXY judge" not in " ".join(tables[1]["text"])
    assert "pref_rate -0.073" in first and "paper's own pair" in first  # the paper's value beside ours
    assert "2 / 0 / 1 (0)" in first and "0.333 [-1.000, 1.000]" in first  # dadpo W/T/L, pref_rate with CI
    assert "lc_win_rate" in first and "0.250 [0.125, 0.500]" in first and "seed" in first  # later columns
    assert "teacher smollm2-135m-instruct -> student: its 20%-pruned copy" in text
    assert "abc123def" in text and "reconstruction note" in text and "final_loss" in text
    images = [a["src"] for a in page.find("img")]
    assert len(images) == 2 and all(s.startswith("data:image/png;base64,") for s in images)  # pref, training
    assert {p.name for p in results.glob("*.png")} == {f"{STEM}_pref.png", f"{STEM}_training.png"}
    data = page.script("report-answers")
    assert data["methods"] == ["sft", "dadpo"] and [j["name"] for j in data["judges"]] == ["reference", "local"]
    assert len(data["prompts"]) == 5
    a1 = next(p for p in data["prompts"] if p[1] == "a1")
    dadpo_ref = a1[8][1][0]  # verdicts of dadpo (method 1) by the reference judge (judge 0)
    assert dadpo_ref[:3] == ["win", True, None] and dadpo_ref[3] == "A" and dadpo_ref[6] == "B"
    assert dadpo_ref[5] == {"sim_a": 0.8123, "sim_b": 0.5}
    assert a1[7] == [len(answer_of("sft", "in_domain", "a1").split()), len(answer_of("dadpo", "in_domain", "a1").split())]


def test_report_has_no_network_reference_and_escapes_answers(tmp_path):
    results, _ = write_run(tmp_path)
    raw = report.build_report(results, STEM, None).read_text()
    page = Page(raw)
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            if name in ("src", "href", "action", "srcset", "poster", "data"):
                assert not str(value).lower().startswith(("http:", "https:", "//")), (tag, name, value)
    assert not page.find("link") and not [a for t, a in page.tags if t == "script" and "src" in a]
    assert "url(" not in raw and "@import" not in raw
    assert len(page.find("script")) == 3  # meta, answers, the app: the hostile answer added none
    assert not page.find("img", src="x") and not page.find("b")
    assert "</script><script>window.pwned" not in raw and "<img src=x" not in raw
    answers = page.script("report-answers")
    assert next(p for p in answers["prompts"] if p[1] == "a2")[6][1] == HOSTILE  # intact once parsed
    csp = page.find("meta", **{"http-equiv": "Content-Security-Policy"})[0]["content"]
    assert "default-src 'none'" in csp


def test_large_run_moves_answers_to_a_sidecar(tmp_path, monkeypatch):
    results, _ = write_run(tmp_path)
    monkeypatch.setattr(report, "MAX_INLINE_BYTES", 2000)
    path = report.build_report(results, STEM, None)
    sidecar = results / f"{STEM}_report.answers.json.gz"
    page = Page(path.read_text())
    assert page.script("report-answers") is None
    assert page.script("report-meta")["sidecar"] == sidecar.name
    assert sidecar.name in " ".join(page.text)  # the page says where its answers are
    assert len(json.loads(gzip.decompress(sidecar.read_bytes()))["prompts"]) == 5
    monkeypatch.setattr(report, "MAX_INLINE_BYTES", 10**9)
    report.build_report(results, STEM, None)
    assert not sidecar.exists()  # a smaller rebuild leaves no stale sidecar


def test_report_without_run_folder_says_so(tmp_path):
    results, run_dir = write_run(tmp_path)
    shutil.rmtree(run_dir)
    page = Page(report.build_report(results, STEM, None).read_text())
    assert "No run folder" in " ".join(page.text) and page.script("report-answers") is None
    assert len([t for t in page.tables if t["attrs"].get("class") == "results"]) == 3


def test_cli(tmp_path, capsys):
    results, run_dir = write_run(tmp_path, run_dir=tmp_path / "elsewhere" / STEM)
    out = tmp_path / "page.html"
    assert report.main([str(results / f"{STEM}.csv"), "--run", str(run_dir), "--out", str(out)]) == 0
    assert len(Page(out.read_text()).script("report-answers")["prompts"]) == 5
    assert report.main([str(results)]) == 0 and (results / f"{STEM}_report.html").is_file()
    for argv, msg in [([str(tmp_path / "nope")], "no such results folder"),
                      ([str(results / f"{STEM}.csv"), "--run", str(tmp_path / "nope")], "no run folder"),
                      ([str(results / f"{STEM}_training.csv")], "not a result CSV")]:
        capsys.readouterr()
        assert report.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and err.count("\n") == 1
    assert not (results / f"{STEM}_training_report.html").exists()


# ---------------------------------------------------------------- figures

def _drawn(monkeypatch) -> list:
    kept = []
    monkeypatch.setattr(figures.plt, "close", kept.append)
    return kept


def test_training_figure_explains_dadpo_and_keeps_ddpo_visible(tmp_path, monkeypatch):
    results, _ = write_run(tmp_path)
    kept = _drawn(monkeypatch)
    made = figures.draw_all(results, STEM)
    assert made == [results / f"{STEM}_pref.png", results / f"{STEM}_training.png"]
    assert all(p.stat().st_size > 10_000 for p in made)
    fig = kept[-1]
    titles = [a.get_title() for a in fig.axes]
    assert "teacher-gap term" in titles[0] and "progress measure" in titles[0]
    assert titles[1].startswith("progress: loss - loss of the same batch at pi_ref")
    assert "teacher smollm2-135m-instruct -> student: its 20%-pruned copy" in fig._suptitle.get_text()
    lines = {ln.get_label(): ln for ln in fig.axes[1].get_lines()}
    ddpo, dadpo = lines["ddpo"], lines["dadpo"]
    assert ddpo.get_zorder() > dadpo.get_zorder()
    assert (ddpo.get_linestyle(), ddpo.get_marker()) != (dadpo.get_linestyle(), dadpo.get_marker())


def test_beta2_legend_sits_below_the_points(tmp_path, monkeypatch):
    results, _ = write_run(tmp_path)
    df = pd.read_csv(results / f"{STEM}.csv")
    dadpo = df[df["method"] == "dadpo"]
    pd.concat([df, dadpo.assign(method="ddpo", beta2=None), dadpo.assign(method="dadpo_beta2=0.3", beta2=0.3)]
              ).to_csv(results / f"{STEM}.csv", index=False)
    kept = _drawn(monkeypatch)
    assert results / f"{STEM}_beta2.png" in figures.draw_all(results, STEM)
    fig = next(f for f in kept if "beta2 sweep" in f.axes[0].get_title())
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    assert legend.y1 < ax.get_window_extent().y0  # below the axes: it covers no point
    assert "teacher smollm2-135m-instruct" in ax.get_title()


# ---------------------------------------------------------------- in a real browser

def chromium_binary() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


needs_chromium = pytest.mark.skipif(
    chromium_binary() is None,
    reason="headless Chromium not installed: `apt-get install -y chromium chromium-driver` (or set $CHROMIUM)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars"]


class Browser:
    """Headless Chromium driven by the DevTools protocol over --remote-debugging-pipe."""

    def __init__(self, profile: Path):
        to_child, self._w = os.pipe()
        self._r, from_child = os.pipe()

        def fds():  # the pipe protocol reads commands on fd 3 and writes replies on fd 4
            os.dup2(to_child, 100)  # via spare numbers: the pipes may themselves be fds 3 or 4
            os.dup2(from_child, 101)
            os.dup2(100, 3)
            os.dup2(101, 4)

        self.proc = subprocess.Popen([chromium_binary(), *FLAGS, f"--user-data-dir={profile}",
                                      "--remote-debugging-pipe", "about:blank"], preexec_fn=fds, close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._id, self._buf, self.session = 0, b"", None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def call(self, method: str, timeout: float = 30, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            if not select.select([self._r], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError(method)
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buf += chunk

    def js(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(res["exceptionDetails"])
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(expression)

    def open(self, url: str):
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._r)
        os.close(self._w)


@pytest.fixture()
def browser(tmp_path):
    b = Browser(tmp_path / "profile")
    yield b
    b.close()


CARDS = "document.querySelectorAll('#cards .card').length"


@needs_chromium
def test_browser_dump_dom_applies_the_filters_in_the_address(tmp_path):
    results, _ = write_run(tmp_path)
    path = report.build_report(results, STEM, None)
    dom = subprocess.run([chromium_binary(), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          path.as_uri() + "#method=dadpo&outcome=win"],
                         capture_output=True, text=True, timeout=120).stdout
    page = Page(dom)
    cards = page.find("article", **{"class": "card"})
    assert len(cards) == expected_cards(method="dadpo", outcome="win") == 4
    assert {c["data-id"] for c in cards} == {"a1", "a2", "a3", "b2"}
    assert {a["data-method"] for a in page.find("section", **{"class": "answer method"})} == {"dadpo"}
    assert not page.find("img", src="x")  # the hostile answer is text in the DOM, not elements
    assert HOSTILE in " ".join(page.text)


def _stripes(png: bytes, x: int) -> int:
    """Runs of the cards' left-stripe colour down column x of a screenshot: one per visible card."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    on = [sum(abs(a - b) for a, b in zip(img.getpixel((x, y)), (31, 78, 121))) < 30 for y in range(img.height)]
    return sum(1 for y in range(len(on)) if on[y] and (y == 0 or not on[y - 1]))


def _screenshot_cards(b: Browser) -> tuple[int, int]:
    """(cards in the screenshot of #cards, distinct colours in it)."""
    from PIL import Image

    height = b.js("document.documentElement.scrollHeight")
    b.call("Emulation.setDeviceMetricsOverride", width=1400, height=height, deviceScaleFactor=1, mobile=False)
    r = b.js("(() => { const r = document.getElementById('cards').getBoundingClientRect();"
             " return {x: r.left, y: r.top + scrollY, w: r.width, h: Math.max(1, r.height)}; })()")
    shot = base64.b64decode(b.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                                   clip={"x": r["x"], "y": r["y"], "width": r["w"], "height": r["h"], "scale": 1})["data"])
    colours = len(Image.open(io.BytesIO(shot)).convert("RGB").getcolors(1 << 24))
    return _stripes(shot, 3), colours


@needs_chromium
def test_browser_filters_search_and_screenshot(tmp_path, browser):
    results, _ = write_run(tmp_path)
    browser.open(report.build_report(results, STEM, None).as_uri())
    assert browser.wait_for(CARDS) == 5
    assert browser.js("window.pwned") is None  # no hostile script ran
    shown, colours = _screenshot_cards(browser)
    assert shown == 5 and colours > 20  # not blank: text, badges, verdict tables
    browser.js("(() => { const s = document.getElementById('f-outcome'); s.value = 'win';"
               " s.dispatchEvent(new Event('change')); })()")
    assert browser.js(CARDS) == expected_cards(outcome="win") == 4
    browser.js("(() => { const s = document.getElementById('f-suite'); s.value = 'mt_bench';"
               " s.dispatchEvent(new Event('change')); })()")
    assert browser.js(CARDS) == expected_cards(outcome="win", suite="mt_bench") == 1
    assert browser.js("location.hash") == "#suite=mt_bench&outcome=win"
    shown, _ = _screenshot_cards(browser)
    assert shown == 1
    browser.js("(() => { for (const id of ['f-outcome', 'f-suite']) { const s = document.getElementById(id);"
               " s.value = ''; s.dispatchEvent(new Event('change')); }"
               " const q = document.getElementById('f-q'); q.value = 'window.pwned';"
               " q.dispatchEvent(new Event('input')); })()")
    browser.wait_for(f"{CARDS} === 1")
    assert browser.js("document.querySelector('#cards .card').dataset.id") == "a2"
    assert HOSTILE in browser.js("document.querySelector('#cards .card').textContent")
    # a judge's verdicts in both orders, as shown for a known prompt
    browser.js("(() => { const q = document.getElementById('f-q'); q.value = 'a1';"
               " q.dispatchEvent(new Event('input')); })()")
    browser.wait_for(f"{CARDS} === 1 && document.querySelector('#cards .card').dataset.id === 'a1'")
    rows = browser.js("[...document.querySelectorAll('#cards section[data-method=dadpo] table.verdicts tr')]"
                      ".map(r => [...r.cells].map(c => c.textContent))")
    assert rows[0] == ["reference (proxy): win"]
    assert rows[1][:2] == ["student first", "A (student)"] and rows[2][:2] == ["teacher first", "B (student)"]
    assert "sim_a 0.8123" in rows[1][2] and rows[3] == ["local: loss"]


@needs_chromium
def test_browser_reads_the_sidecar_through_the_file_picker(tmp_path, browser, monkeypatch):
    results, _ = write_run(tmp_path)
    monkeypatch.setattr(report, "MAX_INLINE_BYTES", 2000)
    path = report.build_report(results, STEM, None)
    browser.open(path.as_uri() + "#outcome=loss")
    browser.wait_for("!!document.getElementById('sidecar-file')")  # file:// refuses fetch: the page asks
    doc = browser.call("DOM.getDocument")["root"]["nodeId"]
    node = browser.call("DOM.querySelector", nodeId=doc, selector="#sidecar-file")["nodeId"]
    browser.call("DOM.setFileInputFiles", nodeId=node, files=[str(results / f"{STEM}_report.answers.json.gz")])
    assert browser.wait_for(CARDS) == expected_cards(outcome="loss") == 4


@needs_chromium
def test_browser_fetches_the_sidecar_when_served(tmp_path, browser, monkeypatch):
    results, _ = write_run(tmp_path)
    monkeypatch.setattr(report, "MAX_INLINE_BYTES", 2000)
    path = report.build_report(results, STEM, None)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(results))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            browser.open(f"http://127.0.0.1:{server.server_port}/{path.name}")
            assert browser.wait_for(CARDS) == 5  # loaded by itself, no picker
            assert "loaded from the sidecar" in browser.js("document.getElementById('browser-status').textContent")
        finally:
            server.shutdown()
