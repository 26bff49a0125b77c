"""Helpers for the reliability / security / bad-input tests: a whole table1 experiment on tiny models.

Everything here is built on the spot and costs seconds on a CPU: a tiny Llama teacher, a smaller
tiny Llama student with the same tokenizer, a tiny BERT sentence encoder for the reference judge,
and a small ShareGPT file made of the first real ShareGPT conversations (offline:sharegpt).
`write_config` writes a YAML that `python -m reproduce.table1 --config` takes.

Subprocesses run with one intra-op thread (OMP_NUM_THREADS=1): on two shared cores, torch's
default of one thread per core makes tiny models ~50x slower (threads wait on each other), and a
fixed thread count keeps CPU float reductions identical from run to run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
STAGE_DONE = " done in "


def save_tiny_lm(folder: Path, seed: int, layers: int, init: float = 0.2, vocab_size: int = 320) -> Path:
    """A tiny random Llama + tokenizer folder. init 0.2 (not 0.02) makes greedy decoding emit varied
    text instead of newlines only, so answers, lengths and verdicts are not all the same."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from dadpo.testing import tiny_tokenizer

    tok = tiny_tokenizer(vocab_size)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=1024,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
                      tie_word_embeddings=True, initializer_range=init)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return Path(folder)


def save_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer BERT with a WordPiece tokenizer (512 positions: the reference judge reads 256)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    corpus = ["Paris is the capital of France.", "The sea is blue and the sky is wide.",
              "Sleep well: keep a routine, avoid caffeine.", "Python functions return values."] * 4
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials,
                                                              show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
    torch.manual_seed(seed)
    model = BertModel(BertConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=512))
    fast.save_pretrained(folder)
    model.save_pretrained(folder)
    return Path(folder)


def sharegpt_subset(path: Path, n: int = 120) -> Path:
    """The first n real ShareGPT records (offline:sharegpt, via DADPO_ASSETS), cut to their first two
    turns, as a ShareGPT-format JSON file: real prompts, loaded in milliseconds."""
    from dadpo.data import iter_json_array, sharegpt_path

    src = sharegpt_path("offline:sharegpt")
    head = src.read_bytes()[: 4 << 20].decode("utf-8", errors="ignore")  # whole records from the first 4 MB
    recs = []
    for rec in iter_json_array(head, str(src)):
        recs.append({"id": rec["id"], "conversations": rec["conversations"][:2]})
        if len(recs) == n:
            break
    Path(path).write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
    return Path(path)


@dataclass
class Tiny:
    root: Path
    teacher: Path
    student: Path
    bert: Path
    prompts: Path

    def config(self, **over) -> dict:
        """The tiny table1 config as a dict; `over` maps "section.key" (or "key") to a value."""
        cfg = {
            "setting": "table1", "scale": "custom", "seed": 0,
            "methods": ["student", "sft", "kd", "ddpo", "dadpo"],
            "models": {"teacher": str(self.teacher), "student": str(self.student), "prune": {"enabled": False}},
            "data": {"prompts": str(self.prompts), "n_train": 8, "n_test": 6, "max_prompt_tokens": 64},
            "generation": {"max_new_tokens": 12, "batch_size": 4},
            "train": {"per_device_batch": 2, "global_batch": 4, "max_len": 96, "epochs": 1, "sft_epochs": 1,
                      "save_every": 1},
            "objective": {"top_k": 8},
            "eval": {"suites": {"in_domain": 6}, "judges": ["reference"], "max_new_tokens": 12,
                     "reference_embedder": str(self.bert), "reference_tie_margin": 0.0},
        }
        for key, value in over.items():
            *path, last = key.split(".")
            d = cfg
            for p in path:
                d = d.setdefault(p, {})
            d[last] = value
        return cfg

    def write_config(self, path: Path, **over) -> Path:
        Path(path).write_text(yaml.safe_dump(self.config(**over), sort_keys=False), encoding="utf-8")
        return Path(path)


def build_tiny(root: Path) -> Tiny:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return Tiny(root, save_tiny_lm(root / "teacher", seed=0, layers=4), save_tiny_lm(root / "student", seed=1, layers=2),
                save_tiny_bert(root / "bert"), sharegpt_subset(root / "sharegpt_head.json"))


def child_env(cache: Path, **extra) -> dict:
    env = {**os.environ, "DADPO_CACHE": str(cache), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_cli(config: Path, out: Path, cache: Path, *args: str, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    """`python -m reproduce.table1 --config CONFIG --out OUT` in a subprocess with its own cache."""
    return subprocess.run([sys.executable, "-m", "reproduce.table1", "--config", str(config), "--out", str(out), *args],
                          cwd=ROOT, env=child_env(cache, **env), capture_output=True, text=True, timeout=timeout)


def stages(log: str, done: bool = True) -> list[str]:
    """Stage names in a run's log: those that finished ("X done in"), or those that started ("X ...")."""
    out = []
    for line in log.replace("\r", "\n").splitlines():
        i = line.find("[table1/")
        if i < 0:
            continue
        text = line[line.index("] ", i) + 2:] if "] " in line[i:] else ""
        if done and STAGE_DONE in text:
            out.append(text.split(STAGE_DONE)[0])
        elif not done and text.endswith(" ..."):
            out.append(text[:-4])
    return out


def files_under(*roots: Path) -> list[Path]:
    return sorted(p for r in roots if Path(r).exists() for p in Path(r).rglob("*") if p.is_file())
