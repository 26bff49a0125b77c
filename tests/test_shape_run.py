"""A shape run end to end on a tiny architecture: random weights built from an arch JSON (no weight
file anywhere), every answer forced to its full length, and every output marked as a shape run."""
import json

import pytest

from reproduce.run import main
from tests.rel_tiny import build_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, shared_assets):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DADPO_ASSETS", str(shared_assets))
        return build_tiny(tmp_path_factory.mktemp("tiny_shape"))


def test_shape_run_of_a_tiny_architecture(tiny, tmp_path, capsys, one_thread):
    arch = json.loads((tiny.teacher / "config.json").read_text())
    arch["dadpo"] = {"hub_id": "example/tiny-chat", "tokenizer": str(tiny.teacher),
                     "generation": {"eos_token_id": arch.get("eos_token_id"), "pad_token_id": arch.get("pad_token_id")}}
    arch_file = tmp_path / "tiny-chat.json"
    arch_file.write_text(json.dumps(arch))
    cfg = tiny.write_config(tmp_path / "c.yaml", **{
        "models.teacher": str(arch_file), "models.student": str(arch_file), "models.init": "random",
        "methods": ["student", "sft"], "eval.suites": {"in_domain": 4}})
    out = tmp_path / "out"
    rc = main("table1", ["--config", str(cfg), "--out", str(out), "--cache", str(tmp_path / "cache")])
    assert rc == 0, capsys.readouterr().err[-2000:]
    prov = json.loads((out / "table1_custom_random.provenance.json").read_text())
    assert prov["shape_run"] is True and "RANDOM WEIGHTS" in prov["reconstructed"] and prov["assets"] == {}
    random_models = list((tmp_path / "cache" / "random").iterdir())
    assert random_models and not list((tmp_path / "cache" / "random").rglob("*.safetensors"))  # built from a seed
    rows = list(__import__("csv").DictReader(open(out / "table1_custom_random.csv")))
    assert {r["method"] for r in rows} == {"student", "sft"} and all(r["shape_run"] == "True" for r in rows)
    assert all(float(r["answer_tokens"]) == 12 and float(r["cut_share"]) == 1.0 for r in rows)  # full length
    assert "shape run" in (out / "table1_custom_random_report.html").read_text().lower()
