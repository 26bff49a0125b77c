"""The experiment config: declared types, choices and ranges, checks across sections, overrides."""
import dataclasses
import typing

import pytest
from pydantic import ValidationError

from dadpo import config
from dadpo.config import ConfigError, ExperimentConfig, load_config


def load(*overrides: str) -> ExperimentConfig:
    return load_config(None, overrides, setting="table1", scale="smoke")


def error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as e:
        load(*overrides)
    assert "\n" not in str(e.value)
    return str(e.value)


def _float_keys(cls=ExperimentConfig, prefix=""):
    for name, info in cls.__pydantic_fields__.items():
        if dataclasses.is_dataclass(info.annotation):
            yield from _float_keys(info.annotation, f"{prefix}{name}.")
        elif info.annotation is float:
            yield prefix + name


FLOAT_KEYS = sorted(_float_keys())


def test_every_float_field_is_found():  # guards the parametrization below
    assert {"train.lr", "eval.reference_tie_margin", "models.prune.target_share", "eval.api_timeout"} <= set(FLOAT_KEYS)


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_non_finite_numbers_are_errors(key, value):
    """`--set train.lr=inf` once trained to NaN; a NaN tie margin made every verdict a tie."""
    assert error(f"{key}={value}").startswith(f"config: {key}: must be a finite number")


@pytest.mark.parametrize("override, expect", [
    ("objective.jsd_lambda=1", "objective.jsd_lambda: must be < 1"),  # generalized JSD is 0 at lam = 0 and 1
    ("objective.jsd_lambda=0", "objective.jsd_lambda: must be > 0"),
    ("objective.skew_alpha=1", "objective.skew_alpha: must be < 1"),  # KL(p || p) = 0
    ("train.max_grad_norm=0", "train.max_grad_norm: must be > 0"),
    ("train.weight_decay=-0.1", "train.weight_decay: must be >= 0"),
    ("train.lora_r=0", "train.lora_r: must be >= 1"),
    ("eval.reference_tie_margin=2", "eval.reference_tie_margin: must be < 2"),
    ("eval.bootstrap=999", "eval.bootstrap: must be >= 1000"),
    ("eval.bootstrap_seed=-1", "eval.bootstrap_seed: must be >= 0"),
    ("eval.api_timeout=0", "eval.api_timeout: must be > 0"),
    ("eval.api_max_attempts=0", "eval.api_max_attempts: must be >= 1"),
    ("train.lr=true", "train.lr: must be a number, got True"),
    ("train.lora=1", "train.lora: must be true or false, got 1"),
    ("data.n_train=8.0", "data.n_train: must be an integer, got 8.0"),
    ("eval.judges=[reference,reference]", "eval.judges: 'reference' is listed twice"),
    ("eval.judges=[]", "eval.judges: must not be empty, got []"),
    ("eval.suites={}", "eval.suites: must not be empty, got {}"),
    ("models.prune.method=heads", "models.prune.method: must be 'layers', 'width' or 'layers+width'"),
    ("models.init=zeros", "models.init: must be 'pretrained' or 'random', got 'zeros'"),
    ("generation.backend=vllm", "generation.backend: must be 'auto', 'eager' or 'static'"),
    ("train.log_with=mlflow", "train.log_with: must be 'none', 'tensorboard' or 'wandb'"),
    ("train.optimizer=adamw_8bit", "train.optimizer: must be 'adamw'"),
    ("train.lm_head=triton", "train.lm_head: must be 'auto', 'liger', 'fused' or 'chunked'"),
    ("train.packing=1", "train.packing: must be true or false, got 1"),
    ("objective.kd_tail_samples=-1", "objective.kd_tail_samples: must be >= 0, got -1"),
    ("seeds=[0,1,0]", "seeds: 0 is listed twice"),
    ("seeds=[1,x]", "seeds[1]: must be an integer, got 'x'"),
    ("scale=huge", "scale: must be 'smoke', 'default', 'large', 'gpu', 'paper' or 'custom'"),
    ("nope=1", "nope: unknown key (known: beta2_sweep, data, eval, extensions, generation, methods, models,"),
])
def test_out_of_range_wrong_type_and_unknown_values(override, expect):
    assert error(override).startswith("config: " + expect)


@pytest.mark.parametrize("overrides, expect", [
    (["methods=[]"], "config: methods: is empty and there are no extensions or beta2_sweep: nothing to run"),
    (["methods=[sft]", "extensions=[sft]"], "config: extensions: 'sft' is already in methods"),
    (["train.global_batch=6"], "config: train.global_batch: 6 is not a multiple of per_device_batch (4)"),
    (["train.max_len=128"], "config: train.max_len: must be > data.max_prompt_tokens (128): no room for an answer"),
    (["data.n_train=3"], "config: data.n_train: 3 prompts are fewer than one train.global_batch (4)"),
    (["models.prune.calibration_prompts=9"], "config: models.prune.calibration_prompts: must be <= data.n_train (8)"),
    (["data.min_chars=2000"], "config: data.min_chars: must be < max_chars (2000)"),
    (["objective.beta1=0", "objective.beta2=0"], "config: objective.beta1: beta1 + beta2 must be > 0"),
    (["objective.beta1=0", "beta2_sweep=[0.2, 0]"], "config: beta2_sweep: 0 with objective.beta1 = 0"),
])
def test_settings_that_would_fail_late_or_silently_fail_at_load(overrides, expect):
    assert error(*overrides).startswith(expect)


def test_checks_across_sections_only_where_they_matter():
    assert load("methods=[]", "extensions=[dadpo_token]").extensions == ["dadpo_token"]
    assert load("methods=[]", "beta2_sweep=[0.3]").beta2_sweep == [0.3]
    assert load("methods=[student]", "models.prune.enabled=false", "data.n_train=2").data.n_train == 2  # no training
    assert load("models.prune.enabled=false", "models.prune.calibration_prompts=9").models.prune.calibration_prompts == 9


def test_a_mapping_override_replaces_the_mapping():
    assert load().eval.suites == {"in_domain": 4, "mt_bench": 4}
    assert load("eval.suites={in_domain: 2}").eval.suites == {"in_domain": 2}
    assert load("eval.suites.mt_bench=1").eval.suites == {"in_domain": 4, "mt_bench": 1}  # a.b=c for one entry
    cfg = load("train={lr: 1.0e-4}")  # a whole section: the rest takes its defaults, not the file's
    assert cfg.train.lr == 1e-4 and cfg.train.max_len == config.TrainConfig().max_len


def test_yaml_11_number_strings_are_numbers(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  lr: 1e-5\n  max_len: 300\nobjective: {beta2: 5e-2}\n")  # YAML 1.1: "1e-5" is a str
    cfg = load_config(p)
    assert cfg.train.lr == 1e-5 and cfg.objective.beta2 == 0.05
    assert error("eval.api_model=3") == "config: eval.api_model: must be a string, got 3"


def test_new_keys_and_their_defaults():
    cfg = ExperimentConfig()
    assert (cfg.seeds, cfg.models.init, cfg.generation.backend, cfg.train.log_with, cfg.train.optimizer) == (
        [], "pretrained", "auto", "none", "adamw")
    assert (cfg.train.packing, cfg.train.lm_head, cfg.train.liger_chunk_mem_const, cfg.objective.kd_tail_samples) == (
        True, "auto", 32, 64)
    assert (cfg.eval.api_timeout, cfg.eval.api_max_attempts, cfg.eval.bootstrap) == (60.0, 6, 1000)
    cfg = load("seeds=[0, 1, 2]", "models.init=random", "generation.backend=static", "train.lm_head=fused",
               "train.log_with=tensorboard", "eval.api_timeout=5", "eval.api_max_attempts=1")
    assert cfg.seeds == [0, 1, 2] and cfg.models.init == "random" and cfg.eval.api_timeout == 5.0
    assert cfg.fingerprint() != load().fingerprint()


def test_sections_stay_dataclasses_and_check_edits():
    cfg = load()
    d = dataclasses.asdict(cfg.train)
    assert d["lr"] == cfg.train.lr and d["optimizer"] == "adamw" and cfg.to_dict()["train"] == d
    assert dataclasses.replace(cfg.objective, beta2=0.3).beta2 == 0.3
    with pytest.raises(ValidationError, match="finite number"):
        dataclasses.replace(cfg.objective, beta2=float("nan"))
    with pytest.raises(ValidationError, match="not a multiple"):
        cfg.train.global_batch = 7
    assert cfg.train.global_batch == 4  # the failed edit left the old value
    with pytest.raises(ValidationError, match="no attribute"):
        cfg.train.nope = 1
    cfg.data.n_train = 2  # per-section edits are checked per section; validate() checks the whole
    with pytest.raises(ConfigError, match="data.n_train: 2 prompts are fewer"):
        cfg.validate()


def test_methods_are_checked_against_the_method_registry_of_the_moment(monkeypatch):
    assert "toy" in error("methods=[student, toy]")
    from dadpo import methods

    monkeypatch.setitem(methods.METHODS, "toy", methods.SFT)  # a method registered at run time
    assert load("methods=[student, toy]").methods == ["student", "toy"]
    assert load("methods=[student]", "extensions=[toy]").extensions == ["toy"]


def test_name_lists_are_the_ones_other_modules_use():
    from baselines.kd import DIVERGENCES

    assert typing.get_args(config.ObjectiveConfig.__pydantic_fields__["divergence"].annotation) == DIVERGENCES
    assert config.ROWS[0] == "student" and set(config.ROWS[1:]) <= set(config.trainable_methods())
