"""The experiment of one config up to every trained model and its evaluation answers, as cached stages.

    assets -> student init (pruned or as is) -> teacher answers -> dSFT -> student answers
    -> precompute (pi_ref, pi_te sequence log-probs; teacher top-k) -> train each method
    -> answers of every model on every eval suite

(docs/method.md#pipeline). Judging those answers is the evaluation layer's job (evals.judge_all); the
entry points in reproduce/ run both. Every stage's output lands in the cache under a key derived
from its inputs (model fingerprints, prompt ids, the settings it reads), so re-running skips finished
stages, changing one setting recomputes only what depends on it, and a cached re-run loads no model.
A lock per cache entry makes a second process wait for an entry another one is computing and then
reuse it. Models are loaded when a stage needs them and freed after.
"""
from __future__ import annotations

import gc
import json
import shutil
import warnings
from dataclasses import asdict, replace
from functools import cached_property
from pathlib import Path

import torch

from baselines.head import pick_implementation
from dadpo.cache import Cache, load_tensors, read_json, save_tensors, stable_hash, write_json
from dadpo.chat import CHAT_TEMPLATES, check_tokenizers, encode_examples
from dadpo.config import ExperimentConfig
from dadpo.examples import answers_of, attach_sequence_scores, attach_teacher_topk, encode_rows
from dadpo.generation import Sampling, answer_lengths, cache_file, cached_answers, generate, resolve_backend
from dadpo.methods import Method, build_method
from dadpo.modeling import device, fingerprint, load_model, load_tokenizer, pick_dtype, resolve
from dadpo.packing import LAYOUT as PACKED_LAYOUT
from dadpo.precompute import TOPK_FORMAT, score_key, sequence_logprobs, teacher_topk
from dadpo.shapes import random_model_folder
from dadpo.stages import Stages, grouped_warnings
from dadpo.trainer import CheckpointError, Trainer

# Which frozen model each kind of precomputed score comes from (see Method.scores).
SCORE_SOURCES = {"ref": "dsft", "te": "teacher", "topk": "teacher", "topk2": "teacher"}


def _free(*models) -> None:
    for m in models:
        del m
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _tokens(encoded: list[dict]) -> int:
    return sum(len(e["input_ids"]) for e in encoded)


def _trainer_numerics() -> str:
    """How the trainer computes log-probs: fp32 weights, bf16 autocast on a GPU."""
    return "torch.float32+autocast-bf16" if torch.cuda.is_available() else "torch.float32"


def _packed(train) -> str | bool:
    """train.packing as cache keys hold it: the packed layout's name, or False."""
    return PACKED_LAYOUT if train.packing else False


def _head(train) -> dict:
    """The LM head implementation the trainer resolves to here, with its setting that can change numbers."""
    head = pick_implementation(train.lm_head, device())
    return {"head": head, **({"liger_chunk_mem_const": train.liger_chunk_mem_const} if head == "liger" else {})}


KD_SAMPLE_SEED = 0  # the tail samples of the teacher's top-k cache: fixed, so the cache is reproducible


class Pipeline:
    def __init__(self, cfg: ExperimentConfig, cache: Cache, log=print):
        self.cfg = cfg
        self.cache = cache
        self.log = log
        self.stages = Stages(f"{cfg.setting}/{cfg.scale}", log)
        self.timings = self.stages.timings
        self.facts: dict = {"stages": self.stages.stats}
        self.training_logs: dict[str, list] = {}
        self.eval_lengths: dict[str, dict] = {}  # model -> suite -> [(tokens, ended on an end-of-turn)]
        self._dsft: dict[int, str] = {}
        # each stage's facts are journaled in the cache as it starts and ends: a run killed before it
        # wrote its provenance leaves them to the run that resumes it (`earlier`: what was there before)
        self.journal = cache.path("journals", cfg.fingerprint(), ".json")
        self.earlier: dict = read_json(self.journal) or {}
        self.stages.on_change = self._write_journal

    # --- bookkeeping -------------------------------------------------------------------------
    def _write_journal(self) -> None:
        write_json(self.journal, {k: {**self.earlier.get(k, {}), **self.facts.get(k, {})}
                                  for k in ("stages", "generation")})

    def stage(self, name: str, tokens: int | None = None):
        """A timed stage (dadpo.stages): seconds, peak memory and tokens go into facts["stages"]."""
        return self.stages(name, tokens)

    def _sealed(self, folder: Path, record: Path) -> bool:
        """True when `folder` is a finished model: its checksummed `record` (written after the folder)
        exists and the folder's content fingerprint equals the one recorded. A folder whose content
        changed is reported and recomputed."""
        rec = read_json(record)
        if rec is None or not (folder / "config.json").is_file():
            return False
        if rec.get("model_fingerprint") == fingerprint(str(folder), self.cache):
            return True
        warnings.warn(f"cache entry {folder} is corrupted (its content differs from the recorded fingerprint); "
                      "recomputing", stacklevel=2)
        return False

    def fp(self, path: str) -> str:
        return fingerprint(path, self.cache, self.cfg.models.trust_remote_code)

    # --- assets and data -----------------------------------------------------------------------
    @property
    def shape_run(self) -> bool:
        """Random weights of the named architectures: time and memory only (dadpo.shapes)."""
        return self.cfg.models.init == "random"

    def _model(self, spec: str) -> str:
        """A model spec as from_pretrained takes it; a random model of its architecture in a shape run."""
        if self.shape_run:
            return random_model_folder(spec, self.cache, self.cfg.seed)
        return resolve(spec, self.cfg.models.trust_remote_code)

    @cached_property
    def _bases(self) -> tuple[str, str]:
        """The teacher and student specs resolved (fetched, verified, converted) in the "assets" stage."""
        with self.stage("assets"):
            return self._model(self.cfg.models.teacher), self._model(self.cfg.models.student)

    @property
    def teacher_path(self) -> str:
        return self._bases[0]

    @cached_property
    def tokenizer(self):
        """The teacher's tokenizer and chat template (models.chat_template may name one), used for both models."""
        tok = load_tokenizer(self.teacher_path, self.cfg.models.trust_remote_code)
        if self.cfg.models.chat_template:
            tok.chat_template = CHAT_TEMPLATES[self.cfg.models.chat_template]
        return tok

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
        base = self._bases[1]
        if not m.prune.enabled:
            return base
        from dadpo.prune import make_pruned_student, report_path

        train, test = self.split
        calib = list(train["prompt"][: m.prune.calibration_prompts])
        held = list(zip(test["prompt"][:16], test["reference"][:16]))
        out = self.cache.path("pruned", {"base": self.fp(base), "prune": asdict(m.prune), "calib": calib,
                                         "held": [h[0] for h in held], "chat_template": self.tokenizer.chat_template})
        if not self._sealed(out, report_path(out)):
            with self.cache.lock(out):
                if not self._sealed(out, report_path(out)):  # another process may have made it meanwhile
                    with self.stage("prune"):
                        rep = make_pruned_student(base, str(out), m.prune.target_share, m.prune.method, calib, held,
                                                  tokenizer=self.tokenizer)
                        write_json(report_path(out), {**rep, "model_fingerprint": self.fp(str(out))})
        self.facts["prune"] = {k: v for k, v in read_json(report_path(out)).items() if k not in ("teacher", "out_dir")}
        return str(out)

    @cached_property
    def tokenizer_check(self) -> dict:
        """Teacher and student must share a tokenizer (white-box distillation); checked once."""
        from transformers import AutoConfig

        trust = self.cfg.models.trust_remote_code
        student_tok = load_tokenizer(self.student_init, trust)
        rows = [AutoConfig.from_pretrained(p, trust_remote_code=trust).vocab_size
                for p in (self.teacher_path, self.student_init)]
        rep = check_tokenizers(self.tokenizer, student_tok, rows[0], rows[1], self.cfg.models.allow_padded_vocab)
        self.facts["tokenizers"] = rep
        return rep

    # --- generation ----------------------------------------------------------------------------
    def sampling(self, greedy: bool = False, max_new_tokens: int | None = None, seed: int | None = None) -> Sampling:
        g = self.cfg.generation
        return Sampling(temperature=0.0 if greedy else g.temperature, top_p=g.top_p,
                        max_new_tokens=max_new_tokens or g.max_new_tokens,
                        max_prompt_tokens=self.cfg.data.max_prompt_tokens,
                        seed=self.cfg.seed if seed is None else seed,
                        ignore_eos=self.shape_run)  # shape runs: every answer at full length (worst case)

    def answers(self, model_path: str, prompts: list[str], sampling: Sampling, name: str,
                lengths: list | None = None) -> list[str]:
        """Answers of a model (cached); the model is loaded only if some answer is missing. `lengths`, if
        given, receives each answer's (tokens, ended on an end-of-turn) when the answer file holds them."""
        dtype = pick_dtype(self.cfg.generation.dtype, "inference")
        backend = resolve_backend(self.cfg.generation.backend, device())
        path = cache_file(self.cache, self.fp(model_path), self.tokenizer, sampling, backend, dtype)
        hit = cached_answers(path, prompts)
        if hit is None:
            with self.cache.lock(path):
                if (hit := cached_answers(path, prompts)) is None:
                    with self.stage(f"generate:{name}"):
                        model = load_model(model_path, dtype, self.cfg.models.trust_remote_code)
                        hit, stats = generate(model, self.tokenizer, prompts, sampling, self.fp(model_path),
                                              cache=self.cache, batch_size=self.cfg.generation.batch_size,
                                              desc=f"answers {name}", backend=backend)
                        _free(model)
                    stats.pop("answers")  # kept in the answer file (answer_lengths)
                    self.facts.setdefault("generation", {})[name] = stats
                    self.facts["stages"][f"generate:{name}"]["tokens"] = stats["new_tokens"]
        if lengths is not None:
            lengths.extend(answer_lengths(path, prompts) or [])
        return hit

    # --- training ------------------------------------------------------------------------------
    def _scores(self, what: str, model_path: str, examples: list[dict], method: Method, name: str) -> None:
        """Attach precomputed frozen-model scores of kind `what` to `examples` (cached; the frozen
        model is loaded only when the cache misses)."""
        cfg, tok, fp = self.cfg, self.tokenizer, self.fp(model_path)
        if what in ("ref", "te"):
            # in the trainer's numerics: these enter the margin beside the policy's, and at step 0 the
            # policy's log-probs must equal pi_ref's exactly (dDPO's first loss is then log 2)
            # packing and the head kernel change bf16 rounding: both enter the key
            enc, head = answers_of(examples), _head(cfg.train)
            key = score_key("seqlp", fp, enc, numerics=_trainer_numerics(), packing=_packed(cfg.train), **head)
            path = self.cache.path("scores", key, ".safetensors", 24)

            def compute():
                frozen = load_model(model_path, torch.float32, cfg.models.trust_remote_code)
                with torch.autocast("cuda", torch.bfloat16, enabled=frozen.device.type == "cuda"):
                    out = sequence_logprobs(frozen, enc, tok.pad_token_id, cfg.generation.batch_size,
                                            cfg.train.logit_chunk, desc=f"score {what}", packing=cfg.train.packing,
                                            head=head["head"], liger_chunk_mem_const=cfg.train.liger_chunk_mem_const)
                _free(frozen)
                return out

            attach_sequence_scores(examples, self._cached_tensors(path, compute, f"precompute:{what}", _tokens(enc)), what)
            return
        dtype = pick_dtype(cfg.models.dtype, "inference")
        report = {}
        for answer in ("chosen", "rejected") if what == "topk2" else ("chosen",):
            enc = [e[answer] for e in examples]
            key = score_key("topk", fp, enc, k=method.top_k, t=method.kd_temperature, vocab=len(tok), dtype=str(dtype),
                            format=TOPK_FORMAT, tail_samples=method.kd_tail_samples, sample_seed=KD_SAMPLE_SEED,
                            packing=_packed(cfg.train))
            path = self.cache.path("scores", key, ".safetensors", 24)

            def compute():
                frozen = load_model(model_path, dtype, cfg.models.trust_remote_code)
                out = teacher_topk(frozen, enc, tok.pad_token_id, method.top_k, method.kd_temperature,
                                   cfg.generation.batch_size, len(tok), desc=f"teacher top-{method.top_k} ({answer})",
                                   tail_samples=method.kd_tail_samples, seed=KD_SAMPLE_SEED,
                                   packing=cfg.train.packing)
                _free(frozen)
                return out

            report[answer] = attach_teacher_topk(
                examples, self._cached_tensors(path, compute, f"precompute:{what}", _tokens(enc)), answer)
        self.facts.setdefault("topk_cache", {})[name] = report

    def _cached_tensors(self, path: Path, compute, stage: str, tokens: int) -> dict:
        if (hit := load_tensors(path)) is not None:
            return hit
        with self.cache.lock(path):
            if (hit := load_tensors(path)) is not None:
                return hit
            with self.stage(stage, tokens):
                out = compute()
                save_tensors(path, out)
        return out

    def _train(self, method: Method, init_path: str, rows: list[dict], name: str, seed: int) -> str:
        """Train `method` from `init_path` on `rows`; returns the trained model folder (cached)."""
        cfg = self.cfg
        sources = {"dsft": lambda: self.dsft(seed), "teacher": lambda: self.teacher_path}
        needs = [(what, sources[SCORE_SOURCES[what]]()) for what in method.scores]
        key = {"method": method.name, "init": self.fp(init_path), "rows": stable_hash(rows, 24),
               "train": {k: v for k, v in asdict(cfg.train).items() if k != "log_with"},  # a tracker changes no number
               "objective": method.settings, "seed": seed,
               "needs": [(n, self.fp(p)) for n, p in needs], "score_numerics": "trainer", **_head(cfg.train),
               "layout": _packed(cfg.train)}
        out = self.cache.path("train", key)
        if not self._sealed(out / "model", out / "result.json"):
            with self.cache.lock(out):
                if not self._sealed(out / "model", out / "result.json"):
                    self._run_training(method, init_path, rows, name, seed, needs, out)
        res = read_json(out / "result.json")
        self.training_logs[name] = res.pop("log", [])
        res.pop("model_dir", None)  # a path of this machine; the model's identity is its fingerprint
        self.facts.setdefault("training", {})[name] = res
        return str(out / "model")

    def _run_training(self, method: Method, init_path: str, rows: list[dict], name: str, seed: int,
                      needs: list, out: Path) -> None:
        cfg, tok = self.cfg, self.tokenizer
        with grouped_warnings():  # one line per kind for a few thousand truncated prompts
            examples = encode_rows(tok, rows, cfg.train.max_len, cfg.data.max_prompt_tokens)
        for what, path in needs:  # precompute with frozen models, one at a time
            self._scores(what, path, examples, method, name)
        with self.stage(f"train:{name}"):
            for attempt in (1, 2):
                model = load_model(init_path, torch.float32, cfg.models.trust_remote_code)
                trainer = Trainer(model, tok, method, cfg.train, out, seed=seed)
                try:
                    result = trainer.train(examples)
                    break
                except CheckpointError as e:
                    if attempt == 2:
                        raise
                    warnings.warn(f"{e}; training {name} from the start", stacklevel=2)
                    shutil.rmtree(out / "checkpoint", ignore_errors=True)
                    _free(model, trainer)
            params = sum(p.numel() for p in model.parameters())
            write_json(out / "result.json", {**asdict(result), "params": params,
                                             "model_fingerprint": self.fp(str(out / "model"))})
            _free(model, trainer)

    def train_rows(self, with_rejected: bool, seed: int) -> list[dict]:
        """Training prompts with the teacher's answer (data: shared by every seed) and, for the DPO
        family, the student's sampled answer (drawn with the training seed)."""
        train, _ = self.split
        prompts = list(train["prompt"])
        chosen = self.answers(self.teacher_path, prompts, self.sampling(), "teacher/train")
        rows = [{"id": i, "prompt": p, "chosen": c} for i, p, c in zip(train["id"], prompts, chosen)]
        if with_rejected:
            sampler = self.dsft(seed) if self.cfg.generation.student_sampler == "dsft" else self.student_init
            rejected = self.answers(sampler, prompts, self.sampling(seed=seed), self._named("student/train", seed))
            for r, y in zip(rows, rejected):
                r["rejected"] = y
        return rows

    def _named(self, name: str, seed: int) -> str:
        return name if seed == self.cfg.seed else f"{name}@seed={seed}"

    def dsft(self, seed: int | None = None) -> str:
        """pi_dSFT: the student fine-tuned on teacher answers; also the DPO family's reference."""
        seed = self.cfg.seed if seed is None else seed
        if seed not in self._dsft:
            self._dsft[seed] = self.trained("sft", seed=seed)
        return self._dsft[seed]

    def trained(self, row: str, beta2: float | None = None, seed: int | None = None) -> str:
        """The model folder for a table row: "student" (untrained) or a method of dadpo.methods;
        `beta2` overrides daDPO's teacher weight (the sweep), `seed` the training seed."""
        seed = self.cfg.seed if seed is None else seed
        _ = self.tokenizer_check  # the untrained student is evaluated with the teacher's tokenizer too
        if row == "student":
            return self.student_init
        objective = self.cfg.objective if beta2 is None else replace(self.cfg.objective, beta2=float(beta2))
        method = build_method(row, objective)
        name = self._named(row if beta2 is None else f"{row}_beta2={beta2:g}", seed)
        init = self.dsft(seed) if method.start == "dsft" else self.student_init
        return self._train(method, init, self.train_rows("rejected" in method.answers, seed), name, seed)

    # --- evaluation answers --------------------------------------------------------------------
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

    def eval_answers(self, models: dict[str, str]) -> dict[str, dict]:
        """Greedy answers of the teacher and every model on every eval suite:
        {suite: {"items": [{id, prompt, reference}], "teacher": [answers], <row>: [answers], ...}}.
        One generation call per model over all suites, so each model loads at most once."""
        ecfg = self.cfg.eval
        greedy = self.sampling(greedy=True, max_new_tokens=ecfg.max_new_tokens)
        suites = {suite: self.suite(suite) for suite in ecfg.suites}
        prompts = [it["prompt"] for items in suites.values() for it in items]
        out = {s: {"items": items} for s, items in suites.items()}
        for row, path in {"teacher": self.teacher_path, **models}.items():
            lengths: list = []
            answers = iter(self.answers(path, prompts, greedy, f"{row}/eval", lengths))
            lengths = iter(lengths) if lengths else None
            for suite, items in suites.items():
                out[suite][row] = [next(answers) for _ in items]
                if lengths is not None:
                    self.eval_lengths.setdefault(row, {})[suite] = [next(lengths) for _ in items]
        return out

    # --- judge-free measures ------------------------------------------------------------------
    def _scored(self, model_path: str, jobs: list[list[dict]], what: str) -> list[dict]:
        """Sequence log-probs of each job's encoded answers under a model (cached per job); the model is
        loaded once, and only if some job misses."""
        dtype = pick_dtype(self.cfg.models.dtype, "inference")
        fp, pad = self.fp(model_path), self.tokenizer.pad_token_id
        paths = [self.cache.path("scores", score_key("seqlp", fp, enc, numerics=str(dtype)), ".safetensors", 24)
                 for enc in jobs]
        found = [load_tensors(p) for p in paths]
        if any(f is None for f in found):
            with self.stage(f"measure:{what}", sum(_tokens(enc) for enc, f in zip(jobs, found) if f is None)):
                model = load_model(model_path, dtype, self.cfg.models.trust_remote_code)
                for i, (enc, path) in enumerate(zip(jobs, paths)):
                    if found[i] is None:
                        found[i] = sequence_logprobs(model, enc, pad, self.cfg.generation.batch_size,
                                                     self.cfg.train.logit_chunk, desc=f"score {what}")
                        save_tensors(path, found[i])
                _free(model)
        return found

    def measures(self, models: dict[str, str], answers: dict[str, dict]) -> dict:
        """Judge-free distillation measures per (model, suite), no judge involved:
        `student_nll`: the model's per-token NLL of the teacher's answers to the held-out prompts (forward KL
        to the teacher up to the teacher's entropy, the same for every model); `teacher_nll`: the teacher's
        per-token NLL of the model's answers."""
        tok, cfg = self.tokenizer, self.cfg
        max_len = cfg.data.max_prompt_tokens + cfg.eval.max_new_tokens + 8
        suites = list(answers)
        jobs = [(name, s) for name in models for s in suites]
        groups = [(s, "teacher") for s in suites] + [(s, name) for name, s in jobs]
        with grouped_warnings():  # every answer encoded in one batch, its truncation warnings in one line
            flat = iter(encode_examples(tok, [it["prompt"] for s, _ in groups for it in answers[s]["items"]],
                                        [a for s, who in groups for a in answers[s][who]], max_len,
                                        cfg.data.max_prompt_tokens))
            encoded = [[next(flat) for _ in answers[s][who]] for s, who in groups]
        teacher_answers, student_answers = encoded[:len(suites)], encoded[len(suites):]

        def nll(scores: dict) -> float:
            return float(-scores["sum"].sum() / max(1, int(scores["count"].sum())))

        out: dict = {}
        for name, path in models.items():
            got = self._scored(path, teacher_answers, f"{name} on teacher answers")
            for suite, scores in zip(suites, got):
                out.setdefault((name, suite), {})["student_nll"] = nll(scores)
        got = self._scored(self.teacher_path, student_answers, "teacher on student answers")
        for key, scores in zip(jobs, got):
            out[key]["teacher_nll"] = nll(scores)
        return out

    def run_facts(self) -> dict:
        return json.loads(json.dumps(self.facts, default=str))
