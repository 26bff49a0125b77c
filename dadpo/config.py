"""Experiment configuration: typed sections loaded from YAML, with `section.key=value` overrides.

Each section is a pydantic dataclass whose fields declare the type, choices (Literal) and range of every
value. `load_config` and `validate()` raise `ConfigError`, one line naming the key, for an unknown key, a
wrong type, an out-of-range or non-finite number, or settings that contradict each other; construction,
assignment and `dataclasses.replace` check the same and raise pydantic's ValidationError (a ValueError).
Choices the paper leaves open are options here; their defaults and evidence: docs/method.md#reconstructions.
"""
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal, Sequence

import yaml
from pydantic import (AfterValidator, BeforeValidator, ConfigDict, Field, Strict, TypeAdapter, ValidationError,
                      model_validator)
from pydantic.dataclasses import dataclass

from baselines.kd import DIVERGENCES
from dadpo import methods as method_registry
from dadpo.chat import CHAT_TEMPLATES

CONFIG_DIR = Path(__file__).resolve().parent.parent / "reproduce" / "configs"
PRUNE_METHODS = ("layers", "width", "layers+width")
ROWS = ("student", "sft", "kd", "ddpo", "dadpo")  # rows of the paper's tables (student = untrained)
SUITES = ("in_domain", "mt_bench", "vicuna80", "alpaca_eval", "arena_hard")
JUDGES = ("reference", "local", "pairrm", "api")
SCALES = ("smoke", "default", "large", "gpu", "paper", "custom")
DTYPES = Literal["auto", "bfloat16", "float32"]


class ConfigError(ValueError):
    """A config value that cannot be used; the message is one line naming the key."""


class _Invalid(ValueError):
    """A failed check across fields; `key`, relative to the checking section, names the value to change."""

    def __init__(self, key: str, msg: str):
        super().__init__(msg)
        self.key = key


def trainable_methods() -> tuple[str, ...]:
    """What `methods` (besides "student", the untrained row) and `extensions` may name: the method
    registry, read at validation time (a method registered at run time is accepted)."""
    return tuple(method_registry.METHODS)


def _trainable(what: str, extra: tuple[str, ...] = ()) -> AfterValidator:
    def check(name: str) -> str:
        if name not in extra + trainable_methods():
            raise ValueError(f"unknown {what} {name!r} (known: {', '.join(extra + trainable_methods())})")
        return name
    return AfterValidator(check)


def _unique(values: list) -> list:
    if dups := [v for i, v in enumerate(values) if v in values[:i]]:
        raise ValueError(f"{dups[0]!r} is listed twice")
    return values


def _yaml_number(value):  # YAML 1.1 reads "1e-5" as a string
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def Number(**bounds):
    """A finite float within pydantic's gt/ge/lt/le `bounds`; ints are accepted, bools are not."""
    return Annotated[float, Strict(), BeforeValidator(_yaml_number), Field(**bounds)]


def Integer(**bounds):
    return Annotated[int, Strict(), Field(**bounds)]


Bool, Seed, Unique = Annotated[bool, Strict()], Integer(ge=0, lt=2**32), AfterValidator(_unique)


def _new(factory):  # a mutable default
    return dataclasses.field(default_factory=factory)


def _section(cls):
    """A checked dataclass. An assignment that fails leaves the old value (pydantic keeps the new one
    when a check across fields fails)."""
    cls = dataclass(cls, config=ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True))
    checked_setattr = cls.__setattr__

    def __setattr__(self, name, value):
        old = self.__dict__.copy()
        try:
            checked_setattr(self, name, value)
        except ValidationError:
            self.__dict__.update(old)
            raise

    cls.__setattr__ = __setattr__
    return cls


@_section
class PruneConfig:
    enabled: Bool = False
    target_share: Number(gt=0, lt=0.9) = 0.2  # share of parameters to remove
    method: Literal[PRUNE_METHODS] = "layers+width"
    calibration_prompts: Integer(ge=1) = 8


@_section
class ModelsConfig:
    teacher: str = "offline:smollm2-135m-instruct"
    student: str = "offline:smollm2-135m-instruct"  # pruned when prune.enabled
    prune: PruneConfig = _new(PruneConfig)
    dtype: DTYPES = "auto"  # auto = bf16 on GPU, fp32 on CPU for training
    allow_padded_vocab: Bool = False  # accept e.g. 151936 vs 152064 embedding rows
    trust_remote_code: Bool = False
    # random = randomly initialised models of the named architectures: time/memory shape runs only
    init: Literal["pretrained", "random"] = "pretrained"
    # a chat template of dadpo.chat.CHAT_TEMPLATES for the teacher's tokenizer; "" = the tokenizer's own
    chat_template: Literal[("",) + tuple(CHAT_TEMPLATES)] = ""


@_section
class DataConfig:
    prompts: str = "offline:sharegpt"
    n_train: Integer(ge=1) = 64
    n_test: Integer(ge=1) = 32
    min_chars: Integer(ge=0) = 10
    max_chars: Integer(ge=1) = 2000
    max_prompt_tokens: Integer(ge=8) = 256  # longer prompts are truncated with a warning
    split_seed: Seed = 0

    @model_validator(mode="after")
    def _consistent(self):
        if self.min_chars >= self.max_chars:
            raise _Invalid("min_chars", f"must be < max_chars ({self.max_chars})")
        return self


@_section
class GenerationConfig:
    temperature: Number(ge=0) = 0.7
    top_p: Number(gt=0, le=1) = 0.95
    max_new_tokens: Integer(ge=1) = 128
    batch_size: Integer(ge=1) = 16
    student_sampler: Literal["dsft", "raw"] = "dsft"  # which student samples the rejected answers
    dtype: DTYPES = "auto"  # auto = bf16 where it is faster (GPU and CPU)
    backend: Literal["auto", "eager", "static"] = "auto"  # decoding: eager, or static KV cache (compiled)


@_section
class TrainConfig:
    lr: Number(gt=0) = 5e-6
    sft_lr: Number(gt=0) = 2e-5
    epochs: Number(gt=0) = 1.0
    sft_epochs: Number(gt=0) = 1.0
    per_device_batch: Integer(ge=1) = 4
    global_batch: Integer(ge=1) = 8  # kept fixed: accumulation = global / (per_device x processes)
    warmup_ratio: Number(ge=0, lt=1) = 0.1
    max_len: Integer(ge=16) = 512  # prompt + response tokens
    weight_decay: Number(ge=0) = 0.0
    max_grad_norm: Number(gt=0) = 1.0  # 0 would clip every update to nothing
    lora: Bool = False
    lora_r: Integer(ge=1) = 16
    gradient_checkpointing: Bool = False
    save_every: Integer(ge=0) = 0  # steps between checkpoints; 0 = only at the end
    logit_chunk: Integer(ge=1) = 1024  # tokens per chunk for per-token log-probs (chunked / fused heads)
    # pack a micro-batch's rows into bins of its longest row (little padding); also for the frozen-model scores
    packing: Bool = True
    # token log-probs from the LM head (baselines.head): auto = liger on CUDA when installed, else chunked;
    # methods that need full logits (KD) keep the logits path whatever this says
    lm_head: Literal["auto", "liger", "fused", "chunked"] = "auto"
    liger_chunk_mem_const: Integer(ge=1) = 32  # liger: transient logits ~ this x tokens x hidden size
    log_with: Literal["none", "tensorboard", "wandb"] = "none"  # experiment tracker, besides log.jsonl
    optimizer: Literal["adamw"] = "adamw"  # fused on CUDA, foreach elsewhere (picked by the trainer)

    @model_validator(mode="after")
    def _consistent(self):
        if self.global_batch % self.per_device_batch:
            raise _Invalid("global_batch", f"{self.global_batch} is not a multiple of per_device_batch "
                                           f"({self.per_device_batch})")
        return self


@_section
class ObjectiveConfig:
    beta: Number(gt=0) = 0.1  # dDPO
    beta1: Number(ge=0) = 0.1  # daDPO: KL to pi_ref (UNCERTAIN)
    beta2: Number(ge=0) = 0.1  # daDPO: KL to pi_te (UNCERTAIN)
    length_average: Bool = False  # summed sequence log-probs by default
    divergence: Literal[DIVERGENCES] = "forward_kl"  # KD-only
    kd_temperature: Number(gt=0) = 1.0
    jsd_lambda: Number(gt=0, lt=1) = 0.5  # JSD is 0 at both ends: no loss
    skew_alpha: Number(ge=0, lt=1) = 0.1  # skewed KL is 0 at alpha = 1: no loss
    top_k: Integer(ge=1) = 64  # teacher top-k cache for KD
    # tail tokens sampled per position from the teacher beyond its top-k (importance-weighted, so the
    # cached KD loss is unbiased; 0 = one merged tail bucket, a lower bound)
    kd_tail_samples: Integer(ge=0) = 64
    token_kd_lambda: Number(ge=0) = 0.1  # extension: token-level daDPO

    @model_validator(mode="after")
    def _consistent(self):
        if self.beta1 + self.beta2 <= 0:
            raise _Invalid("beta1", "beta1 + beta2 must be > 0")
        return self


@_section
class EvalConfig:
    suites: Annotated[dict[Literal[SUITES], Integer(ge=0)], Field(min_length=1)] = _new(
        lambda: {"in_domain": 32, "mt_bench": 16})  # suite -> n (0 = all)
    judges: Annotated[list[Literal[JUDGES]], Field(min_length=1), Unique] = _new(lambda: ["reference"])
    max_new_tokens: Integer(ge=1) = 128
    temperature: Number(ge=0) = 0.0  # greedy answers for evaluation
    bootstrap: Integer(ge=1000) = 1000
    bootstrap_seed: Seed = 0
    local_judge: str = "offline:qwen2.5-coder-1.5b-instruct"
    reference_embedder: str = "offline:all-minilm-l6-v2"
    reference_tie_margin: Number(ge=0, lt=2) = 0.01  # cosine gaps lie in [-2, 2]: 2 would tie everything
    api_model: str = "gpt-4o-mini"
    api_base_url: str = ""  # empty = the openai default
    api_concurrency: Integer(ge=1) = 4
    api_timeout: Number(gt=0) = 60.0  # seconds per request
    api_max_attempts: Integer(ge=1) = 6  # per verdict, with backoff between attempts
    pairrm: str = "llm-blender/PairRM-hf"


@_section
class ExperimentConfig:
    setting: Literal["table1", "table2"] = "table1"  # table1: pruned student; table2: smaller student
    scale: Literal[SCALES] = "smoke"
    seed: Seed = 0
    seeds: Annotated[list[Seed], Unique] = _new(list)  # training seeds; [] = [seed]
    methods: Annotated[list[Annotated[str, _trainable("method", ("student",))]], Unique] = _new(lambda: list(ROWS))
    extensions: Annotated[list[Annotated[str, _trainable("extension")]], Unique] = _new(list)  # rows beyond the paper
    beta2_sweep: Annotated[list[Number(ge=0)], Unique] = _new(list)  # extra daDPO runs (figure)
    models: ModelsConfig = _new(ModelsConfig)
    data: DataConfig = _new(DataConfig)
    generation: GenerationConfig = _new(GenerationConfig)
    train: TrainConfig = _new(TrainConfig)
    objective: ObjectiveConfig = _new(ObjectiveConfig)
    eval: EvalConfig = _new(EvalConfig)

    @model_validator(mode="after")
    def _consistent(self):
        """Settings that would otherwise fail after work has started, or silently give wrong results."""
        if not (self.methods or self.extensions or self.beta2_sweep):
            raise _Invalid("methods", "is empty and there are no extensions or beta2_sweep: nothing to run")
        if both := [m for m in self.extensions if m in self.methods]:
            raise _Invalid("extensions", f"{both[0]!r} is already in methods")
        d, t = self.data, self.train
        if t.max_len <= d.max_prompt_tokens:
            raise _Invalid("train.max_len", f"must be > data.max_prompt_tokens ({d.max_prompt_tokens}): "
                                            "no room for an answer")
        trains = any(m != "student" for m in self.methods) or self.extensions or self.beta2_sweep
        if trains and d.n_train < t.global_batch:
            raise _Invalid("data.n_train", f"{d.n_train} prompts are fewer than one train.global_batch "
                                           f"({t.global_batch})")
        if self.models.prune.enabled and d.n_train < self.models.prune.calibration_prompts:
            raise _Invalid("models.prune.calibration_prompts", f"must be <= data.n_train ({d.n_train}): "
                                                               "calibration prompts come from the train split")
        if self.objective.beta1 == 0 and 0 in self.beta2_sweep:
            raise _Invalid("beta2_sweep", "0 with objective.beta1 = 0: beta1 + beta2 must be > 0")
        return self

    def validate(self) -> "ExperimentConfig":
        """A checked copy (after attribute edits, which are checked per section only)."""
        return _build(self.to_dict())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


_ADAPTER = TypeAdapter(ExperimentConfig)
_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
_MESSAGES = {"finite_number": "must be a finite number", "float_type": "must be a number",
             "int_type": "must be an integer", "bool_type": "must be true or false", "string_type": "must be a string",
             "list_type": "must be a list", "dict_type": "must be a mapping", "dataclass_type": "must be a mapping",
             "literal_error": "must be {expected}", "too_short": "must not be empty"}


def _one_line(e: ValidationError) -> ConfigError:
    """pydantic's first error as `config: <dotted.key>: <message>`."""
    err = e.errors(include_url=False)[0]
    loc, ctx, kind = list(err["loc"]), err.get("ctx", {}), err["type"]
    if isinstance(ctx.get("error"), Exception):  # raised by a check here
        loc, msg = loc + (ctx["error"].key.split(".") if isinstance(ctx["error"], _Invalid) else []), str(ctx["error"])
    elif kind == "unexpected_keyword_argument":
        section = ExperimentConfig
        for part in loc[:-1]:
            section = section.__pydantic_fields__[part].annotation
        msg = f"unknown key (known: {', '.join(sorted(section.__pydantic_fields__))})"
    elif loc[-1:] == ["[key]"]:  # a mapping key outside its Literal
        loc, msg = loc[:-2], f"unknown key {err['input']!r} (must be {ctx['expected']})"
    else:
        bound = next((f"must be {op} {ctx[b]}" for b, op in _BOUNDS.items() if b in ctx), None)
        short = _MESSAGES[kind].format(**ctx) if kind in _MESSAGES else err["msg"]
        msg = f"{bound or short}, got {repr(err['input'])[:80]}"
    key = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
    return ConfigError(f"config: {key or '(top level)'}: {msg}")


def config_from_dict(data: dict) -> ExperimentConfig:
    """A checked config from a mapping (e.g. the `config` a provenance file recorded)."""
    return _build(data)


def _build(data: dict) -> ExperimentConfig:
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as e:
        raise _one_line(e) from None


def _split_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise ConfigError(f"config: override {text!r}: expected section.key=value")
    path, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return path.strip().split("."), value


def parse_override(text: str) -> dict:
    """`train.lr=1e-5` -> {"train": {"lr": 1e-5}}; the value is parsed as YAML."""
    path, out = _split_override(text)
    for part in reversed(path):
        out = {part: out}
    return out


def config_path(setting: str, scale: str) -> Path:
    return CONFIG_DIR / f"{setting}_{scale}.yaml"


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                setting: str | None = None, scale: str | None = None) -> ExperimentConfig:
    """Load a YAML config (or the packaged one for setting x scale) and apply overrides.

    An override replaces the value at its key: `eval.suites={in_domain: 4}` leaves only in_domain."""
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
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path}: top level must be a mapping")
    for text in overrides:
        keys, value = _split_override(text)
        node = data
        for key in keys[:-1]:  # a missing or non-mapping parent becomes a mapping
            node[key] = node[key] if isinstance(node.get(key), dict) else {}
            node = node[key]
        node[keys[-1]] = value
    return _build(data)
