"""Experiment configuration: typed dataclasses loaded from YAML, with `section.key=value` overrides.

Every value is checked on load: an unknown key, a wrong type or an out-of-range value raises
`ConfigError` with a one-line message naming the key. UNCERTAIN choices of the paper (METHOD.md)
are options here, with METHOD.md's defaults.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "reproduce" / "configs"
METHODS = ("sft", "ddpo", "dadpo", "kd", "dadpo_token")  # trainable objectives
ROWS = ("student", "sft", "kd", "ddpo", "dadpo")  # rows of the paper's tables (student = untrained)
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl")
SUITES = ("in_domain", "mt_bench", "vicuna80", "alpaca_eval", "arena_hard")
JUDGES = ("reference", "local", "pairrm", "api")
SCALES = ("smoke", "default", "gpu", "paper", "custom")


class ConfigError(ValueError):
    """A config value that cannot be used; the message is one line naming the key."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config: {key}: {msg}")


@dataclass
class PruneConfig:
    enabled: bool = False
    target_share: float = 0.2  # share of parameters to remove
    method: str = "layers+width"  # layers | width | layers+width
    calibration_prompts: int = 8

    def validate(self, p: str) -> None:
        _check(0.0 < self.target_share < 0.9, f"{p}.target_share", "must be in (0, 0.9)")
        _check(self.method in ("layers", "width", "layers+width"), f"{p}.method",
               "must be one of layers, width, layers+width")
        _check(self.calibration_prompts >= 1, f"{p}.calibration_prompts", "must be >= 1")


@dataclass
class ModelsConfig:
    teacher: str = "offline:smollm2-135m-instruct"
    student: str = "offline:smollm2-135m-instruct"  # pruned when prune.enabled
    prune: PruneConfig = field(default_factory=PruneConfig)
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU for training) | bfloat16 | float32
    allow_padded_vocab: bool = False  # accept e.g. 151936 vs 152064 embedding rows
    trust_remote_code: bool = False

    def validate(self, p: str) -> None:
        _check(self.dtype in ("auto", "bfloat16", "float32"), f"{p}.dtype",
               "must be auto, bfloat16 or float32")
        self.prune.validate(f"{p}.prune")


@dataclass
class DataConfig:
    prompts: str = "offline:sharegpt"
    n_train: int = 64
    n_test: int = 32
    min_chars: int = 10
    max_chars: int = 2000
    max_prompt_tokens: int = 256  # longer prompts are truncated with a warning
    split_seed: int = 0

    def validate(self, p: str) -> None:
        _check(self.n_train >= 1, f"{p}.n_train", "must be >= 1")
        _check(self.n_test >= 1, f"{p}.n_test", "must be >= 1")
        _check(0 <= self.min_chars < self.max_chars, f"{p}.min_chars", "must be >= 0 and < max_chars")
        _check(self.max_prompt_tokens >= 8, f"{p}.max_prompt_tokens", "must be >= 8")


@dataclass
class GenerationConfig:
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 128
    batch_size: int = 16
    student_sampler: str = "dsft"  # dsft | raw: which student samples the rejected answers
    dtype: str = "auto"  # auto = bf16 where it is faster (GPU, and CPU per ASSETS.md)

    def validate(self, p: str) -> None:
        _check(self.temperature >= 0, f"{p}.temperature", "must be >= 0")
        _check(0 < self.top_p <= 1, f"{p}.top_p", "must be in (0, 1]")
        _check(self.max_new_tokens >= 1, f"{p}.max_new_tokens", "must be >= 1")
        _check(self.batch_size >= 1, f"{p}.batch_size", "must be >= 1")
        _check(self.student_sampler in ("dsft", "raw"), f"{p}.student_sampler", "must be dsft or raw")
        _check(self.dtype in ("auto", "bfloat16", "float32"), f"{p}.dtype",
               "must be auto, bfloat16 or float32")


@dataclass
class TrainConfig:
    lr: float = 5e-6
    sft_lr: float = 2e-5
    epochs: float = 1.0
    sft_epochs: float = 1.0
    per_device_batch: int = 4
    global_batch: int = 8  # kept fixed: accumulation = global / (per_device x processes)
    warmup_ratio: float = 0.1
    max_len: int = 512  # prompt + response tokens
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora: bool = False
    lora_r: int = 16
    gradient_checkpointing: bool = False
    save_every: int = 0  # steps between checkpoints; 0 = only at the end
    logit_chunk: int = 1024  # tokens per chunk for per-token log-probs

    def validate(self, p: str) -> None:
        for k in ("lr", "sft_lr"):
            _check(getattr(self, k) > 0, f"{p}.{k}", "must be > 0")
        _check(self.epochs > 0 and self.sft_epochs > 0, f"{p}.epochs", "must be > 0")
        _check(self.per_device_batch >= 1, f"{p}.per_device_batch", "must be >= 1")
        _check(self.global_batch >= self.per_device_batch, f"{p}.global_batch",
               "must be >= per_device_batch")
        _check(0 <= self.warmup_ratio < 1, f"{p}.warmup_ratio", "must be in [0, 1)")
        _check(self.max_len >= 16, f"{p}.max_len", "must be >= 16")
        _check(self.logit_chunk >= 1, f"{p}.logit_chunk", "must be >= 1")
        _check(self.save_every >= 0, f"{p}.save_every", "must be >= 0")


@dataclass
class ObjectiveConfig:
    beta: float = 0.1  # dDPO
    beta1: float = 0.1  # daDPO: KL to pi_ref (UNCERTAIN; METHOD.md default)
    beta2: float = 0.1  # daDPO: KL to pi_te (UNCERTAIN; METHOD.md default)
    length_average: bool = False  # summed sequence log-probs by default
    divergence: str = "forward_kl"  # KD-only
    kd_temperature: float = 1.0
    jsd_lambda: float = 0.5
    skew_alpha: float = 0.1
    top_k: int = 64  # teacher top-k cache for KD
    token_kd_lambda: float = 0.1  # extension: token-level daDPO

    def validate(self, p: str) -> None:
        for k in ("beta", "beta1", "beta2", "token_kd_lambda"):
            _check(getattr(self, k) >= 0, f"{p}.{k}", "must be >= 0")
        _check(self.beta > 0, f"{p}.beta", "must be > 0")
        _check(self.beta1 + self.beta2 > 0, f"{p}.beta1", "beta1 + beta2 must be > 0")
        _check(self.divergence in DIVERGENCES, f"{p}.divergence", f"must be one of {', '.join(DIVERGENCES)}")
        _check(self.kd_temperature > 0, f"{p}.kd_temperature", "must be > 0")
        _check(0 <= self.jsd_lambda <= 1, f"{p}.jsd_lambda", "must be in [0, 1]")
        _check(0 <= self.skew_alpha <= 1, f"{p}.skew_alpha", "must be in [0, 1]")
        _check(self.top_k >= 1, f"{p}.top_k", "must be >= 1")


@dataclass
class EvalConfig:
    suites: dict = field(default_factory=lambda: {"in_domain": 32, "mt_bench": 16})  # suite -> n (0 = all)
    judges: list = field(default_factory=lambda: ["reference"])
    max_new_tokens: int = 128
    temperature: float = 0.0  # greedy answers for evaluation
    bootstrap: int = 1000
    bootstrap_seed: int = 0
    local_judge: str = "offline:qwen2.5-coder-1.5b-instruct"
    reference_embedder: str = "offline:all-minilm-l6-v2"
    reference_tie_margin: float = 0.01
    api_model: str = "gpt-4o-mini"
    api_base_url: str = ""  # empty = the openai default
    api_concurrency: int = 4
    pairrm: str = "llm-blender/PairRM-hf"

    def validate(self, p: str) -> None:
        for s, n in self.suites.items():
            _check(s in SUITES, f"{p}.suites", f"unknown suite {s!r} (known: {', '.join(SUITES)})")
            _check(isinstance(n, int) and not isinstance(n, bool) and n >= 0, f"{p}.suites.{s}",
                   "must be an integer >= 0")
        for j in self.judges:
            _check(j in JUDGES, f"{p}.judges", f"unknown judge {j!r} (known: {', '.join(JUDGES)})")
        _check(self.max_new_tokens >= 1, f"{p}.max_new_tokens", "must be >= 1")
        _check(self.bootstrap >= 1000, f"{p}.bootstrap", "must be >= 1000")
        _check(self.reference_tie_margin >= 0, f"{p}.reference_tie_margin", "must be >= 0")
        _check(self.api_concurrency >= 1, f"{p}.api_concurrency", "must be >= 1")


@dataclass
class ExperimentConfig:
    setting: str = "table1"  # table1 (pruned student) | table2 (smaller student)
    scale: str = "smoke"
    seed: int = 0
    methods: list = field(default_factory=lambda: list(ROWS))
    extensions: list = field(default_factory=list)  # e.g. ["dadpo_token"]
    beta2_sweep: list = field(default_factory=list)  # extra daDPO runs (figure)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> "ExperimentConfig":
        _check(self.setting in ("table1", "table2"), "setting", "must be table1 or table2")
        _check(self.scale in SCALES, "scale", f"must be one of {', '.join(SCALES)}")
        for m in self.methods:
            _check(m in ROWS, "methods", f"unknown method {m!r} (known: {', '.join(ROWS)})")
        for m in self.extensions:
            _check(m in ("dadpo_token",), "extensions", f"unknown extension {m!r} (known: dadpo_token)")
        for b in self.beta2_sweep:
            _check(isinstance(b, (int, float)) and b >= 0, "beta2_sweep", "values must be numbers >= 0")
        for name in ("models", "data", "generation", "train", "objective", "eval"):
            getattr(self, name).validate(name)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _coerce(value, tp, key: str):
    """Check `value` against the annotated type `tp`; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        _check(isinstance(value, dict), key, "must be a mapping")
        return _from_dict(tp, value, key)
    if tp is bool:
        _check(isinstance(value, bool), key, f"must be true or false, got {value!r}")
    elif tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, f"must be an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key,
               f"must be a number, got {value!r}")
        return float(value)
    elif tp is str:
        _check(isinstance(value, str), key, f"must be a string, got {value!r}")
    elif tp is list or origin is list:
        _check(isinstance(value, list), key, f"must be a list, got {value!r}")
    elif tp is dict or origin is dict:
        _check(isinstance(value, dict), key, f"must be a mapping, got {value!r}")
    return value


def _from_dict(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        _check(k in names, key, f"unknown key (known: {', '.join(sorted(names))})")
        kwargs[k] = _coerce(v, hints[k], key)
    return cls(**kwargs)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> dict:
    """`train.lr=1e-5` -> {"train": {"lr": 1e-5}}; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"config: override {text!r}: expected section.key=value")
    path, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    out: dict = value
    for part in reversed(path.strip().split(".")):
        out = {part: out}
    return out


def config_path(setting: str, scale: str) -> Path:
    return CONFIG_DIR / f"{setting}_{scale}.yaml"


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = (),
                setting: str | None = None, scale: str | None = None) -> ExperimentConfig:
    """Load a YAML config (or the packaged one for setting x scale) and apply overrides."""
    if path is None:
        path = config_path(setting or "table1", scale or "default")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config: {path}: invalid YAML ({str(e).splitlines()[0]})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config: {path}: invalid UTF-8 at byte {e.start} ({e.reason})") from None
    _check(isinstance(data, dict), str(path), "top level must be a mapping")
    for o in overrides:
        data = _deep_merge(data, parse_override(o))
    return _from_dict(ExperimentConfig, data).validate()

