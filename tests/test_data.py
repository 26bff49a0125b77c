import json
import random
from collections import Counter

import pytest

from dadpo import data
from dadpo.data import DataError


def _conv(rid, *turns):
    return {"id": rid, "conversations": [{"from": f, "value": v} for f, v in turns]}


def _write_sharegpt(path, records, tail=b""):
    body = json.dumps(records, ensure_ascii=False, indent=2).encode("utf-8")
    path.write_bytes(body[:-2] + b",\n" + tail if tail else body)  # tail: a cut-off last record
    return path


def _prompts(n, prefix="p"):
    return data._to_dataset([data._row(f"{prefix}-{i}", f"prompt number {i}") for i in range(n)], "test")


# --------------------------------------------------------------------------------------- ShareGPT
def test_truncated_json_recovers_whole_records(tmp_path):
    recs = [_conv(f"r{i}", ("human", f"question {i} é"), ("gpt", "answer")) for i in range(3)]
    # Cut the last record mid-string, and mid-way through a 2-byte UTF-8 character.
    tail = '  {"id": "r3", "conversations": [{"from": "human", "value": "cut é'.encode("utf-8")[:-1]
    path = _write_sharegpt(tmp_path / "sg.json", recs, tail)
    assert [r["id"] for r in data.iter_json_array(data._read_truncated_utf8(path))] == ["r0", "r1", "r2"]
    whole = list(data.iter_json_array(json.dumps(recs)))
    assert whole == recs


def test_invalid_utf8_inside_file_is_an_error(tmp_path):
    path = tmp_path / "sg.json"
    path.write_bytes(b'[{"id": "a\xff\xfe", "conversations": []}, {"id": "b"}]')
    with pytest.raises(DataError, match="sg.json: line 1, byte 10: invalid UTF-8"):
        data.read_sharegpt(path)


def test_sharegpt_filters_and_dedupe(tmp_path):
    recs = [
        _conv("ok_0", ("human", "How do I sort a list in Python?"), ("gpt", "Use sorted().")),
        _conv("cont_1", ("gpt", "continuation chunk"), ("human", "A later question that is long enough")),
        _conv("sys_0", ("system", "be nice"), ("human", "Tell me a joke please"), ("gpt", "ok")),
        _conv("short_0", ("human", "hi"), ("gpt", "hello")),
        _conv("long_0", ("human", "x" * 2001), ("gpt", "ok")),
        _conv("ko_0", ("human", "간단한 MBTI 진단 테스트를 만들어 보고 싶어"), ("gpt", "ok")),
        _conv("noref_0", ("human", "A question without an answer"), ("gpt", "   ")),
        _conv("dup_0", ("human", "  how do I SORT a list   in python?"), ("gpt", "Another answer.")),
        _conv("empty_0"),
        _conv("en_0", ("human", "Please translate this paragraph into English for me and then explain what it means. 지금 번역하기"), ("gpt", "ok")),
    ]
    stats = {}
    ds = data.read_sharegpt(_write_sharegpt(tmp_path / "sg.json", recs), 10, 2000, stats)
    assert ds["id"] == ["sharegpt-ok_0-0", "sharegpt-en_0-0"]
    assert ds[0]["reference"] == "Use sorted()." and ds[0]["turns"] == [ds[0]["prompt"]]
    assert set(ds.column_names) == {"id", "prompt", "reference", "reference_model", "subset", "turns"}
    assert stats == {"records": 10, "not_human_first": 3, "length": 2, "no_reference": 1, "not_english": 1,
                     "duplicate": 1, "kept": 2}


def test_sharegpt_repeated_record_id_gets_distinct_stable_id(tmp_path):
    recs = [_conv("same_0", ("human", "first question here"), ("gpt", "a")),
            _conv("same_0", ("human", "second question here"), ("gpt", "b"))]
    ds = data.read_sharegpt(_write_sharegpt(tmp_path / "sg.json", recs))
    assert ds["id"] == ["sharegpt-same_0-0", "sharegpt-same_0-0-dup2"]


def test_english_heuristic():
    assert data.is_english("Write a poem about the sea")
    assert not data.is_english("Viết cho tôi một kịch bản cho một bộ phim hoạt hình")
    assert not data.is_english("12345 !!!")


# ------------------------------------------------------------------------------------------ splits
def test_split_disjoint_deterministic_and_order_independent():
    ds = _prompts(200)
    train, test = data.split_prompts(ds, 120, 50, seed=3)
    assert len(train) == 120 and len(test) == 50
    assert not set(train["id"]) & set(test["id"])
    train, test = list(train["id"]), list(test["id"])
    again = data.split_prompts(_prompts(200), 120, 50, seed=3)
    assert (list(again[0]["id"]), list(again[1]["id"])) == (train, test)
    order = list(range(200))
    random.Random(0).shuffle(order)
    shuffled = data.split_prompts(ds.select(order), 120, 50, seed=3)
    assert list(shuffled[0]["id"]) == train and list(shuffled[1]["id"]) == test
    assert list(data.split_prompts(ds, 120, 50, seed=4)[1]["id"]) != test


def test_test_set_stable_as_sizes_change():
    ds = _prompts(300)
    test = list(data.split_prompts(ds, 10, 40, seed=0)[1]["id"])
    train_prev = []
    for n_train in (10, 50, 150, 260):
        train, t = data.split_prompts(ds, n_train, 40, seed=0)
        assert list(t["id"]) == test  # held-out prompts never move
        assert list(train["id"])[: len(train_prev)] == train_prev  # growing train only adds prompts
        train_prev = list(train["id"])
    train_small, _ = data.split_prompts(ds, 50, 10, seed=0)
    train_big_test, _ = data.split_prompts(ds, 50, 200, seed=0)
    assert list(train_small["id"]) == list(train_big_test["id"])  # and train does not move when n_test grows


def test_split_too_large_is_an_error():
    with pytest.raises(DataError, match="exceeds the 20 prompts"):
        data.split_prompts(_prompts(20), 15, 6, seed=0)


def test_take_stable_prefix_property():
    ds = _prompts(50)
    a, b = list(data.take_stable(ds, 7, seed=1)["id"]), list(data.take_stable(ds, 8, seed=1)["id"])
    assert b[:7] == a
    assert list(data.take_stable(ds.select(range(49, -1, -1)), 7, seed=1)["id"]) == a
    assert list(data.take_stable(ds, 0)["id"]) == list(ds["id"])


# -------------------------------------------------------------------------------------- benchmarks
def _jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_mt_bench_with_references(tmp_path):
    q = _jsonl(tmp_path / "mt.jsonl", [{"question_id": 1, "category": "math", "turns": ["Q1 first", "Q1 second"]},
                                       {"question_id": 2, "category": "writing", "turns": ["Q2 first", "Q2 b"]}])
    r = _jsonl(tmp_path / "ref.jsonl", [{"question_id": 1, "model_id": "gpt-4",
                                         "choices": [{"index": 0, "turns": ["A1", "A1b"]}]}])
    ds = data.read_fastchat_questions(q, "mt_bench", r)
    assert ds["id"] == ["mt_bench-1", "mt_bench-2"]
    assert ds[0]["prompt"] == "Q1 first" and ds[0]["turns"] == ["Q1 first", "Q1 second"]
    assert ds["reference"] == ["A1", ""] and ds["reference_model"] == ["gpt-4", ""]
    assert ds["subset"] == ["math", "writing"]


@pytest.mark.parametrize("row, msg", [
    ({"question_id": 3, "category": "x"}, "row 2: field 'turns' must be list, got missing"),
    ({"question_id": 3, "category": "x", "turns": "text"}, "row 2: field 'turns' must be list, got str"),
    ({"question_id": 3, "category": "x", "turns": ["   "]}, "row 2: field 'turns' must be a list of strings"),
    ({"question_id": "3", "category": "x", "turns": ["q"]}, "row 2: field 'question_id' must be int"),
    ({"question_id": 1, "category": "x", "turns": ["q"]}, "duplicate id 'mt_bench-1'"),
    ('{"question_id": 3, "turns": [', "row 2: invalid JSON"),
    ("[1, 2]", "row 2: expected a JSON object"),
])
def test_bad_benchmark_rows(tmp_path, row, msg):
    q = _jsonl(tmp_path / "mt.jsonl", [{"question_id": 1, "category": "math", "turns": ["ok"]}, row])
    with pytest.raises(DataError, match="mt.jsonl: .*" + msg.replace("[", r"\[")) as e:
        data.read_fastchat_questions(q, "mt_bench")
    assert "\n" not in str(e.value)


def test_invalid_utf8_row_is_named(tmp_path):
    q = tmp_path / "mt.jsonl"
    q.write_bytes(b'{"question_id": 1, "category": "m", "turns": ["ok"]}\n{"question_id": 2, "turns": ["\xff"]}\n')
    with pytest.raises(DataError, match="mt.jsonl: row 2: invalid UTF-8"):
        data.read_fastchat_questions(q, "mt_bench")


def test_alpaca_eval_and_bad_row(tmp_path):
    good = [{"dataset": "oasst", "instruction": "Do X", "output": "X done", "generator": "gpt4_1106_preview"},
            {"dataset": "koala", "instruction": "Do Y", "output": "Y done", "generator": "gpt4_1106_preview"}]
    p = tmp_path / "alpaca.json"
    p.write_text(json.dumps(good))
    ds = data.read_alpaca_eval(p)
    assert ds["id"] == ["alpaca_eval-0", "alpaca_eval-1"] and ds["subset"] == ["oasst", "koala"]
    assert ds["reference"] == ["X done", "Y done"] and ds["reference_model"][0] == "gpt4_1106_preview"
    p.write_text(json.dumps(good + [{"dataset": "oasst", "instruction": "", "output": "", "generator": "g"}]))
    with pytest.raises(DataError, match="alpaca.json: row 2: field 'instruction' is empty"):
        data.read_alpaca_eval(p)


def test_arena_hard_baselines_by_category(tmp_path):
    q = _jsonl(tmp_path / "question.jsonl", [
        {"uid": "a1", "category": "hard_prompt", "subcategory": "coding", "prompt": "code it"},
        {"uid": "b2", "category": "creative_writing", "subcategory": "creative_writing", "prompt": "write it"},
        {"uid": "c3", "category": "creative_writing", "subcategory": "creative_writing", "prompt": "again"}])
    o3 = _jsonl(tmp_path / "o3.jsonl", [
        {"uid": "a1", "messages": [{"role": "user", "content": "code it"},
                                   {"role": "assistant", "content": {"answer": "o3 code"}}]},
        {"uid": "b2", "messages": [{"role": "assistant", "content": {"answer": "o3 story"}}]}])
    gem = _jsonl(tmp_path / "gem.jsonl", [{"uid": "b2", "messages": [{"role": "assistant", "content": "gem story"}]}])
    ds = data.read_arena_hard(q, {"o3-mini-2025-01-31": o3, "gemini-2.0-flash-001": gem})
    assert ds["id"] == ["arena_hard-a1", "arena_hard-b2", "arena_hard-c3"]
    assert ds["reference"] == ["o3 code", "gem story", ""]
    assert ds["reference_model"] == ["o3-mini-2025-01-31", "gemini-2.0-flash-001", ""]
    assert ds["subset"] == ["coding", "creative_writing", "creative_writing"]


def test_unknown_suite():
    with pytest.raises(DataError, match="unknown suite 'nope'"):
        data.load_suite("nope")
    with pytest.raises(DataError, match="load_in_domain"):
        data.load_suite("in_domain")


# ------------------------------------------------------------------------------- real packaged data
@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("real_assets")


@pytest.mark.slow
def test_real_sharegpt(real_cache, monkeypatch):
    monkeypatch.setenv("DADPO_CACHE", str(real_cache))
    stats = {}
    ds = data.read_sharegpt(data.sharegpt_path(), 10, 2000, stats)
    assert stats["records"] == 17671
    assert 8500 <= len(ds) <= 9400 and len(set(ds["id"])) == len(ds)
    train, test = data.load_in_domain(data.DataConfig(n_train=100, n_test=30))
    assert len(train) == 100 and len(test) == 30 and not set(train["id"]) & set(test["id"])


@pytest.mark.slow
def test_real_suites(real_cache, monkeypatch):
    monkeypatch.setenv("DADPO_CACHE", str(real_cache))
    mt = data.load_suite("mt_bench")
    assert len(mt) == 80 and sum(bool(r) for r in mt["reference"]) == 30
    assert all(len(t) == 2 for t in mt["turns"])
    assert len(data.load_suite("vicuna80")) == 80
    alpaca = data.load_suite("alpaca_eval")
    assert len(alpaca) == 805
    assert Counter(alpaca["subset"]) == {"selfinstruct": 252, "oasst": 188, "koala": 156, "helpful_base": 129,
                                         "vicuna": 80}
    arena = data.load_suite("arena_hard")
    assert len(arena) == 750 and sum(bool(r) for r in arena["reference"]) >= 748
    sub = data.load_suite("arena_hard", n=16, seed=0)
    assert len(sub) == 16 and list(data.load_suite("arena_hard", n=17, seed=0)["id"])[:16] == list(sub["id"])
