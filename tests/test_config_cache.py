"""Config validation and the atomic, checksummed cache."""
import json

import pytest

from dadpo.cache import atomic_dir, atomic_path, read_json, safe_join, write_json
from dadpo.config import CONFIG_DIR, ConfigError, load_config


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.setting in path.stem and cfg.scale in path.stem


@pytest.mark.parametrize("override,msg", [
    ("objective.beta=-0.1", "objective.beta: must be > 0"),
    ("objective.beta1=-1", "objective.beta1: must be >= 0"),
    ("objective.top_k=0", "objective.top_k: must be >= 1"),
    ("train.lr=fast", "train.lr: must be a number"),
    ("train.nope=1", "train.nope: unknown key (known: epochs, global_batch,"),
    ("models.prune.target_share=1.5", "models.prune.target_share: must be < 0.9, got 1.5"),
    ("eval.judges=[oracle]", "eval.judges[0]: must be 'reference', 'local', 'pairrm' or 'api', got 'oracle'"),
    ("methods=[sft,magic]", "methods[1]: unknown method 'magic'"),
    ("data.n_train=0", "data.n_train: must be >= 1"),
    ("objective.divergence=l2", "objective.divergence"),
])
def test_invalid_values_are_one_line_errors(tmp_path, override, msg):
    p = tmp_path / "c.yaml"
    p.write_text("setting: table1\nscale: smoke\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, [override])
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_overrides_apply(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("setting: table2\ntrain:\n  lr: 1.0e-5\n")
    cfg = load_config(p, ["train.lr=3e-6", "objective.beta2=0"])
    assert cfg.train.lr == 3e-6 and cfg.objective.beta2 == 0.0 and cfg.setting == "table2"
    assert cfg.fingerprint() != load_config(p).fingerprint()


def test_checksummed_json_detects_corruption(tmp_path):
    p = tmp_path / "e.json"
    write_json(p, {"a": [1, 2, 3]})
    assert read_json(p) == {"a": [1, 2, 3]}
    raw = json.loads(p.read_text())
    raw["payload"]["a"][0] = 9
    p.write_text(json.dumps(raw))
    with pytest.warns(UserWarning, match="corrupted"):
        assert read_json(p) is None
    p.write_text("{not json")
    with pytest.warns(UserWarning, match="corrupted"):
        assert read_json(p) is None


def test_atomic_writes_leave_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    folder = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_dir(folder) as tmp:
            (tmp / "w").write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_safe_join_stays_inside(tmp_path):
    for name in ["../../etc/passwd", "/abs/path", "..", "a/../../b", "org/model"]:
        p = safe_join(tmp_path, name)
        assert tmp_path.resolve() in p.parents


def test_git_sha_of_a_copied_tree_is_the_named_one(monkeypatch):
    from reproduce.run import git_sha

    assert git_sha() and "named by" not in git_sha()
    monkeypatch.setenv("DADPO_SOURCE_SHA", "abc123")  # a copy whose .git is missing or stale
    assert git_sha().startswith("abc123 (named by DADPO_SOURCE_SHA")


UMASK_SNIPPET = """
import os, sys, torch
os.umask(int(sys.argv[2], 8))
from pathlib import Path
from dadpo.cache import atomic_dir, save_tensors, write_json
root = Path(sys.argv[1])
write_json(root / "e.json", {"a": 1})
save_tensors(root / "t.safetensors", {"x": torch.zeros(2)})
with atomic_dir(root / "model") as tmp:
    (tmp / "w").write_text("w")
    (tmp / "sub").mkdir()
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, str(tmp / "sub" / "model.safetensors"))  # 0600, as save_pretrained writes
"""


@pytest.mark.parametrize("umask, file_mode, dir_mode", [("002", 0o664, 0o775), ("022", 0o644, 0o755)])
def test_cache_entries_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    """Atomic writes go through mkstemp/mkdtemp (0600/0700): entries get the umask's modes instead, so
    a cache shared by a group stays readable by it."""
    import subprocess
    import sys

    from rel_tiny import ROOT, child_env

    r = subprocess.run([sys.executable, "-c", UMASK_SNIPPET, str(tmp_path), umask], cwd=ROOT, env=child_env(tmp_path),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")}
    files = ["e.json", "t.safetensors", "t.safetensors.sha256.json", "model/w", "model/sub/model.safetensors"]
    assert modes == {**dict.fromkeys(files, file_mode), "model": dir_mode, "model/sub": dir_mode}
