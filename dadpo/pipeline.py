"""The whole experiment for one config, as cached stages (DESIGN.md's data flow).

    assets -> student init (pruned or as is) -> teacher answers -> dSFT -> student answers
    -> precompute (pi_ref, pi_te sequence log-probs; teacher top-k) -> train each method
    -> answers on every eval suite -> judge vs teacher (both orders) -> metrics

Every stage's output lands in the cache under a key derived from its inputs (model fingerprints,
prompt ids, the settings it reads), so re-running skips finished stages and changing one setting
recomputes only what depends on it. Models are loaded when a stage needs them and freed after.
"""
from __future__ import annotations

import gc
import json
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, replace
from functools import cached_property
from pathlib import Path

import torch

from dadpo.cache import cache_root, read_json, safe_join, stable_hash, write_json
from dadpo.chat import check_tokenizers
from dadpo.config import ExperimentConfig
from dadpo.generation import Sampling, generate
from dadpo.modeling import device, fingerprint, load_model, load_tokenizer, pick_dtype, resolve


def _free(*models) -> None:
    for m in models:
        del m
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Pipeline:
    def __init__(self, cfg: ExperimentConfig, log=print):
        self.cfg = cfg
        self.log = log
        self.timings: dict[str, float] = {}
        self.facts: dict = {}

    # --- bookkeeping -------------------------------------------------------------------------
    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        self.log(f"[{self.cfg.setting}/{self.cfg.scale}] {name} ...")
        yield
        dt = time.perf_counter() - t0
        self.timings[name] = round(self.timings.get(name, 0.0) + dt, 2)
        self.log(f"[{self.cfg.setting}/{self.cfg.scale}] {name} done in {dt:.1f}s")

    def _dir(self, kind: str, key_obj) -> Path:
        return safe_join(cache_root(), kind, f"{kind}-{stable_hash(key_obj, 20)}")

    @staticmethod
    def _sealed(folder: Path, record: Path) -> bool:
        """True when `folder` is a finished model: its checksummed `record` (written after the folder)
        exists and the folder's content fingerprint equals the one recorded. A folder whose content
        changed is reported and recomputed. Records written before fingerprints were kept get one."""
        rec = read_json(record)
        if rec is None or not (folder / "config.json").is_file():
            return False
        fp = fingerprint(str(folder))
        if "model_fingerprint" not in rec:
            write_json(record, {**rec, "model_fingerprint": fp})
            return True
        if rec["model_fingerprint"] == fp:
            return True
        warnings.warn(f"cache entry {folder} is corrupted (its content differs from the recorded fingerprint); "
                      "recomputing", stacklevel=2)
        return False

    # --- assets and data -----------------------------------------------------------------------
    @cached_property
    def teacher_path(self) -> str:
        with self.stage("assets"):
            return resolve(self.cfg.models.teacher, self.cfg.models.trust_remote_code)

    @cached_property
    def tokenizer(self):
        """The teacher's tokenizer and chat template, used for both models."""
        return load_tokenizer(self.teacher_path, self.cfg.models.trust_remote_code)

    @cached_property
    def teacher_fp(self) -> str:
        return fingerprint(self.teacher_path)

    @cached_property
    def split(self):
        from dadpo.data import load_in_domain

        with self.stage("data"):
            train, test = load_in_domain(self.cfg.data)
        self.facts["data"] = {"train": len(train), "test": len(test), "source": self.cfg.data.prompts}
        return train, test

    @cached_property
    def student_init(self) -> str:
        """The student before any training: the pruned teacher (table1) or the small model (table2)."""
        m = self.cfg.models
        base = resolve(m.student, m.trust_remote_code)
        if not m.prune.enabled:
            return base
        from dadpo.prune import make_pruned_student, report_path

        train, test = self.split
        calib = list(train["prompt"][: m.prune.calibration_prompts])
        held = list(zip(test["prompt"][:16], test["reference"][:16]))
        out = self._dir("pruned", {"base": fingerprint(base), "prune": asdict(m.prune), "calib": calib,
                                   "held": [h[0] for h in held]})
        if not self._sealed(out, report_path(out)):
            with self.stage("prune"):
                rep = make_pruned_student(base, str(out), m.prune.target_share, m.prune.method, calib, held)
                write_json(report_path(out), {**rep, "model_fingerprint": fingerprint(str(out))})
        self.facts["prune"] = read_json(report_path(out))
        return str(out)

    def check_tokenizers(self) -> dict:
        from transformers import AutoConfig

        trust = self.cfg.models.trust_remote_code
        student_tok = load_tokenizer(self.student_init, trust)
        rows = [AutoConfig.from_pretrained(p, trust_remote_code=trust).vocab_size
                for p in (self.teacher_path, self.student_init)]
        rep = check_tokenizers(self.tokenizer, student_tok, rows[0], rows[1], self.cfg.models.allow_padded_vocab)
        self.facts["tokenizers"] = rep
        return rep

    # --- generation ----------------------------------------------------------------------------
    def sampling(self, greedy: bool = False, max_new_tokens: int | None = None) -> Sampling:
        g = self.cfg.generation
        return Sampling(temperature=0.0 if greedy else g.temperature, top_p=g.top_p,
                        max_new_tokens=max_new_tokens or g.max_new_tokens,
                        max_prompt_tokens=self.cfg.data.max_prompt_tokens, seed=self.cfg.seed)

    def answers(self, model_path: str, prompts: list[str], sampling: Sampling, name: str) -> list[str]:
        """Answers of a model (cached); the model is loaded only if some answer is missing."""
        from dadpo.generation import _prompt_key, cache_file

        fp = fingerprint(model_path)
        store = read_json(cache_file(fp, self.tokenizer, sampling)) or {}
        if all(_prompt_key(p) in store for p in prompts):
            return [store[_prompt_key(p)] for p in prompts]
        with self.stage(f"generate:{name}"):
            model = load_model(model_path, pick_dtype(self.cfg.generation.dtype, "inference"),
                               self.cfg.models.trust_remote_code)
            out, stats = generate(model, self.tokenizer, prompts, sampling, fp,
                                  self.cfg.generation.batch_size, desc=f"answers {name}")
            _free(model)
        self.facts.setdefault("generation", {})[name] = stats
        return out

    # --- training ------------------------------------------------------------------------------
    def _train(self, method: str, init_path: str, rows: list[dict], objective=None, name: str | None = None,
               needs=()) -> str:
        """Train `method` from `init_path` on `rows`; returns the trained model folder (cached)."""
        from dadpo.examples import attach_sequence_scores, attach_teacher_topk, encode_rows
        from dadpo.trainer import Trainer

        cfg = self.cfg
        objective = objective or cfg.objective
        name = name or method
        key = {"method": method, "init": fingerprint(init_path), "rows": stable_hash(rows, 24),
               "train": asdict(cfg.train), "objective": asdict(objective), "seed": cfg.seed,
               "needs": [(n, fingerprint(p)) for n, p in needs], "score_numerics": "trainer"}
        out = self._dir("train", key)
        if self._sealed(out / "model", out / "result.json"):
            self._record_training(name, out)
            return str(out / "model")
        tok = self.tokenizer
        examples = encode_rows(tok, rows, cfg.train.max_len, cfg.data.max_prompt_tokens)
        for what, path in needs:  # precompute with frozen models, one at a time
            with self.stage(f"precompute:{what}"):
                if what in ("ref", "te"):
                    # sequence scores in the trainer's numerics (fp32 weights, bf16 autocast on GPU):
                    # they enter the margin beside the policy's, and at step 0 the policy's log-probs
                    # must equal pi_ref's exactly (dDPO's first loss is then log 2)
                    frozen = load_model(path, torch.float32, cfg.models.trust_remote_code)
                    with torch.autocast("cuda", torch.bfloat16, enabled=frozen.device.type == "cuda"):
                        attach_sequence_scores(examples, frozen, fingerprint(path), tok.pad_token_id, what,
                                               cfg.generation.batch_size, cfg.train.logit_chunk)
                else:  # top-k teacher distributions for KD
                    frozen = load_model(path, pick_dtype(cfg.models.dtype, "inference"), cfg.models.trust_remote_code)
                    answers = ("chosen", "rejected") if what == "topk2" else ("chosen",)
                    rep = attach_teacher_topk(examples, frozen, fingerprint(path), tok.pad_token_id,
                                              objective.top_k, objective.kd_temperature,
                                              cfg.generation.batch_size, len(tok), answers)
                    self.facts.setdefault("topk_cache", {})[name] = rep
                _free(frozen)
        with self.stage(f"train:{name}"):
            model = load_model(init_path, torch.float32, cfg.models.trust_remote_code)
            trainer = Trainer(model, tok, method, cfg.train, objective, out, seed=cfg.seed)
            result = trainer.train(examples)
            write_json(out / "result.json", {**asdict(result), "model_fingerprint": fingerprint(str(out / "model"))})
            _free(model, trainer)
        self._record_training(name, out)
        return str(out / "model")

    def _record_training(self, name: str, out: Path) -> None:
        res = read_json(out / "result.json") or {}
        res["log_file"] = str(out / "log.jsonl")
        self.facts.setdefault("training", {})[name] = res

    def train_rows(self, with_rejected: bool) -> list[dict]:
        train, _ = self.split
        prompts = list(train["prompt"])
        chosen = self.answers(self.teacher_path, prompts, self.sampling(), "teacher/train")
        rows = [{"id": i, "prompt": p, "chosen": c} for i, p, c in zip(train["id"], prompts, chosen)]
        if with_rejected:
            sampler = self.dsft if self.cfg.generation.student_sampler == "dsft" else self.student_init
            rejected = self.answers(sampler, prompts, self.sampling(), "student/train")
            for r, y in zip(rows, rejected):
                r["rejected"] = y
        return rows

    @cached_property
    def dsft(self) -> str:
        """pi_dSFT: the student fine-tuned on teacher answers; also the DPO family's reference."""
        self.check_tokenizers()
        return self._train("sft", self.student_init, self.train_rows(False))

    def trained(self, row: str, beta2: float | None = None) -> str:
        """The model folder for a table row: student (untrained), sft, kd, ddpo, dadpo, dadpo_token."""
        if row == "student":  # untrained, but evaluated with the teacher's tokenizer: check it first
            self.check_tokenizers()
            return self.student_init
        if row == "sft":
            return self.dsft
        if row == "kd":  # KD-only starts from the student, on teacher answers
            self.check_tokenizers()
            return self._train("kd", self.student_init, self.train_rows(False), needs=[("topk", self.teacher_path)])
        rows = self.train_rows(True)
        needs = [("ref", self.dsft)]
        if row == "ddpo":
            return self._train("ddpo", self.dsft, rows, needs=needs)
        if row == "dadpo":
            obj = self.cfg.objective if beta2 is None else replace(self.cfg.objective, beta2=float(beta2))
            name = "dadpo" if beta2 is None else f"dadpo_beta2={beta2:g}"
            return self._train("dadpo", self.dsft, rows, obj, name, needs + [("te", self.teacher_path)])
        if row == "dadpo_token":
            return self._train("dadpo_token", self.dsft, rows, needs=needs + [("topk2", self.teacher_path)])
        raise ValueError(f"unknown row {row!r}")

    # --- evaluation ----------------------------------------------------------------------------
    def suite(self, name: str) -> list[dict]:
        """Eval prompts of a suite: {id, prompt, reference}; in_domain is the held-out split."""
        n = self.cfg.eval.suites[name]
        if name == "in_domain":
            _, test = self.split
            ds = test.select(range(min(n, len(test)))) if n else test
        else:
            from dadpo.data import load_suite

            ds = load_suite(name, n, self.cfg.seed)
        return [{"id": r["id"], "prompt": r["prompt"], "reference": r["reference"] or None} for r in ds]

    def evaluate(self, models: dict[str, str]) -> tuple[list[dict], list[dict]]:
        """Judge every model's answers against the teacher's on every suite, both orders.

        Returns (summary rows, per-comparison records)."""
        from evals.judges import VerdictCache, make_judge
        from evals.protocol import Pair, compare
        from evals.records import comparison_record, summary_row

        ecfg = self.cfg.eval
        greedy = self.sampling(greedy=True, max_new_tokens=ecfg.max_new_tokens)
        suites = {suite: self.suite(suite) for suite in ecfg.suites}
        prompts = [it["prompt"] for items in suites.values() for it in items]
        answers: dict = {}  # one generation call per model over all suites: each model loads once
        for row, path in {"teacher": self.teacher_path, **models}.items():
            out = iter(self.answers(path, prompts, greedy, f"{row}/eval"))
            for suite, items in suites.items():
                answers.setdefault(suite, {})[row] = [next(out) for _ in items]
        self.eval_answers = {s: {"items": suites[s], **answers[s]} for s in suites}
        cache = VerdictCache(cache_root() / "judges" / "verdicts.sqlite")
        rows, records = [], []
        for jname in ecfg.judges:
            judge = make_judge(jname, ecfg, cache=cache)
            with self.stage(f"judge:{jname}"):
                for suite, items in suites.items():
                    for row in models:
                        pairs = [Pair(it["id"], it["prompt"], s, t, it["reference"]) for it, s, t in
                                 zip(items, answers[suite][row], answers[suite]["teacher"])]
                        comps = compare(judge, pairs)
                        ident = judge.identity
                        records += [comparison_record(suite, row, "teacher", ident, judge.proxy, p, c)
                                    for p, c in zip(pairs, comps)]
                        rows.append(summary_row(suite, row, "teacher", ident, judge.proxy, pairs, comps,
                                                ecfg.bootstrap, ecfg.bootstrap_seed))
            self.facts.setdefault("judges", {})[jname] = {"identity": judge.identity, "stats": judge.stats}
            judge.close()
        return rows, records

    def run_facts(self) -> dict:
        return json.loads(json.dumps(self.facts, default=str))


def default_device() -> str:
    return str(device())
