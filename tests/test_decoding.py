"""Decoding backends: static == eager token for token (greedy fp32), seeded sampling, the cache
contract with a backend, and the benchmark's CPU dry run."""
import warnings

import json

import pytest
import torch

from dadpo.cache import Cache

from dadpo.decoding import Sampling, StaticDecoder, make_decoder, packed_decode_attention, pick, resolve_backend
from dadpo.generation import LENGTHS, _prompt_key, cache_file, generate
from dadpo.testing import tiny_llama

# lengths from 16 to ~140 tokens: across the 32 / 64 / 128 prompt-length boundaries
PROMPTS = ["Hello", "x", "Write a poem", "def add", "The quick brown fox", "What is the capital of France? " * 3,
           "Explain relativity simply " * 2, "List three ways to improve sleep " * 6, "Hello, how are you " * 9]
STOP = 226  # a token some rows of the chaotic model below emit within 16 steps and others never do


@pytest.fixture()
def chaotic(tok):
    """A tiny model with large random weights: answers vary by prompt (small inits repeat one token);
    STOP counts as end of turn."""
    model = tiny_llama(tok).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.25)
    model.generation_config.eos_token_id = [tok.eos_token_id, STOP]
    return model


def _answers(model, tok, sampling, backend, batch_size, fp="fp", **kw):
    return generate(model, tok, PROMPTS, sampling, fp, cache=Cache.default(), batch_size=batch_size, backend=backend, **kw)


def test_static_greedy_equals_eager_token_for_token(tok, chaotic, one_thread):
    s = Sampling(temperature=0.0, max_new_tokens=16)
    ref, ref_st = _answers(chaotic, tok, s, "eager", 4, fp="eager")
    ended = [eot for _, eot in ref_st["answers"].values()]
    assert any(ended) and not all(ended)  # end of turn inside the budget for some rows only
    # batch 4: the last batch of 1 runs with 3 dummy rows; batch 9 holds every prompt length at once
    for bs in (4, 9):
        out, st = _answers(chaotic, tok, s, "static", bs, fp=f"static-{bs}")
        assert out == ref and st["answers"] == ref_st["answers"] and st["backend"] == "static"
        assert st["new_tokens"] == ref_st["new_tokens"] and st["compiled_shapes"] == 0


def test_compiled_step_traces_as_one_graph_and_keeps_answers(tok, chaotic, one_thread):
    """The step the GPU compiles (fullgraph=True), traced here by dynamo without code generation."""
    s = Sampling(temperature=0.0, max_new_tokens=12)
    ref, _ = _answers(chaotic, tok, s, "eager", 9, fp="eager")
    dec = StaticDecoder(chaotic, tok.pad_token_id, compile=True, compile_backend="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a fallback to the uncompiled step warns
        out, st = _answers(chaotic, tok, s, dec, 9, fp="compiled")
    assert out == ref and st["compiled_shapes"] == 1 and st["compile_s"] > 0 and dec.compiled


def test_compiled_sampling_step_keeps_answers(tok, chaotic, one_thread):
    """Sampled decoding compiles the forward only (the nucleus pick runs eagerly after it): the same
    seeded answers as the uncompiled step, without falling back."""
    s = Sampling(temperature=1.0, top_p=0.9, max_new_tokens=12, seed=3)
    ref, _ = _answers(chaotic, tok, s, StaticDecoder(chaotic, tok.pad_token_id, compile=False), 9, fp="plain")
    dec = StaticDecoder(chaotic, tok.pad_token_id, compile=True, compile_backend="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        out, st = _answers(chaotic, tok, s, dec, 9, fp="compiled")
    assert out == ref and st["compiled_shapes"] == 1 and dec.compiled


@pytest.mark.parametrize("backend", ["eager", "static"])
def test_sampled_answers_are_seeded(tok, chaotic, backend, one_thread):
    s = Sampling(temperature=1.0, top_p=0.9, max_new_tokens=10, seed=5)
    a, _ = _answers(chaotic, tok, s, backend, 4, fp="a")
    b, _ = _answers(chaotic, tok, s, backend, 4, fp="b")
    c, _ = _answers(chaotic, tok, Sampling(temperature=1.0, top_p=0.9, max_new_tokens=10, seed=6), backend, 4, fp="a")
    greedy, _ = _answers(chaotic, tok, Sampling(temperature=0.0, max_new_tokens=10), backend, 4, fp="a")
    assert a == b and a != c and a != greedy


def test_pick_samples_the_nucleus_in_proportion():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(20000, 1)
    noise = torch.empty_like(logits).exponential_(generator=torch.Generator().manual_seed(0))
    got = torch.bincount(pick(logits, 1.0, 0.7, noise), minlength=4) / 20000
    assert got[2:].sum() == 0  # 0.5 + 0.3 reach top_p: the tail is cut
    assert abs(got[0] - 0.5 / 0.8) < 0.02 and abs(got[1] - 0.3 / 0.8) < 0.02
    full = torch.bincount(pick(logits, 1.0, 1.0, noise), minlength=4) / 20000
    assert torch.allclose(full, probs, atol=0.02)
    assert pick(logits[:2], 0.0, 0.7, None).tolist() == [0, 0]


def test_packed_attention_equals_repeated_key_values():
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import repeat_kv

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(shape, generator=g) for shape in ((3, 6, 1, 8), (3, 2, 10, 8), (3, 2, 10, 8)))
    mask = torch.rand(3, 1, 1, 10, generator=g) > 0.3
    mask[:, ..., -1] = True
    out, _ = packed_decode_attention(SimpleNamespace(num_key_value_groups=3), q, k, v, mask, scaling=0.5)
    want = torch.nn.functional.scaled_dot_product_attention(q, repeat_kv(k, 3), repeat_kv(v, 3), attn_mask=mask,
                                                            scale=0.5).transpose(1, 2)
    assert out.shape == (3, 1, 6, 8) and torch.allclose(out, want, atol=1e-6)


def test_cache_contract_with_static_backend(tok, chaotic, monkeypatch):
    s = Sampling(temperature=0.0, max_new_tokens=8)
    whole, _ = _answers(chaotic, tok, s, "static", 4, fp="whole")
    # answers do not depend on what was cached before
    generate(chaotic, tok, PROMPTS[3:6], s, "part", cache=Cache.default(), batch_size=4, backend="static")
    part, st = _answers(chaotic, tok, s, "static", 4, fp="part")
    assert part == whole and st["cached"] == 3
    # a second call generates nothing
    monkeypatch.setattr(StaticDecoder, "_decode", lambda *a, **k: pytest.fail("decoded a cached prompt"))
    again, st = _answers(chaotic, tok, s, "static", 4, fp="whole")
    assert again == whole and st["cached"] == len(PROMPTS) and st["new_tokens"] == 0
    # a run killed in its second batch keeps the first batch
    calls = []

    def dies(self, prompt_ids, sampling, stop_ids, seed):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return [[5] for _ in prompt_ids]

    monkeypatch.setattr(StaticDecoder, "_decode", dies)
    with pytest.raises(KeyboardInterrupt):
        _answers(chaotic, tok, s, "static", 4, fp="killed")
    from dadpo.cache import read_json

    kept = read_json(cache_file(Cache.default(), "killed", tok, s, "static"))
    first = [_prompt_key(p) for p in sorted(PROMPTS, key=lambda p: (len(p), p))[:4]]
    assert sorted(k for k in kept if k != LENGTHS) == sorted(first) and sorted(kept[LENGTHS]) == sorted(first)


def test_cache_key_names_the_backend_only_where_answers_can_differ(tok):
    greedy, sampled = Sampling(temperature=0.0), Sampling(temperature=0.7)
    assert cache_file(Cache.default(), "m", tok, greedy, "static", torch.float32) == cache_file(Cache.default(), "m", tok, greedy, "eager")
    assert cache_file(Cache.default(), "m", tok, greedy, "static", torch.bfloat16) != cache_file(Cache.default(), "m", tok, greedy, "eager",
                                                                                 torch.bfloat16)
    assert cache_file(Cache.default(), "m", tok, sampled, "static") != cache_file(Cache.default(), "m", tok, sampled, "eager")
    assert cache_file(Cache.default(), "m", tok, Sampling(temperature=0.0, ignore_eos=True)) != cache_file(Cache.default(), "m", tok, greedy)
    with pytest.raises(ValueError, match="resolve 'auto'"):
        cache_file(Cache.default(), "m", tok, greedy, "auto")
    # keys written before the ignore_eos option existed still find their answers
    from dataclasses import asdict

    from dadpo.cache import stable_hash

    old = {k: v for k, v in asdict(greedy).items() if k != "ignore_eos"}
    template = __import__("hashlib").sha256(tok.chat_template.encode()).hexdigest()[:12]
    assert cache_file(Cache.default(), "m", tok, greedy).stem == stable_hash({"model": "m", "template": template, "sampling": old})


def test_backend_names(tok, tiny_model):
    assert resolve_backend("auto", "cuda") == "static" and resolve_backend("static", "cpu") == "static"
    _, st = generate(tiny_model, tok, ["Hello"], Sampling(max_new_tokens=2), "fp", cache=Cache.default(), backend="auto")
    assert st["backend"] == resolve_backend("auto", "cpu")
    with pytest.raises(ValueError, match="unknown generation backend 'vllm'"):
        make_decoder("vllm", tiny_model, 0)


def test_bench_generation_cpu_dry_run(tmp_path, one_thread):
    from reproduce.bench import decoders as bg
    from reproduce.bench.rows import read_csv

    out = tmp_path / "gen.csv"
    assert bg.main(["--batches", "2", "--new", "4", "--prompt", "8", "--out", str(out)]) == 0
    rows = read_csv(out)
    got = {(r["implementation"], r["notes"].split(":")[0]) for r in rows}
    assert got == {("eager", "warm"), ("static", "warm")}  # uncompiled on CPU: no cold row to speak of
    assert all(float(r["tokens_per_s"]) > 0 and float(r["bw_share"]) > 0 for r in rows)
    prov = json.loads(out.with_suffix(".provenance.json").read_text())
    assert prov["cpu-generation"]["settings"]["new_tokens"] == 4 and prov["cpu-generation"]["git_sha"]
    assert bg.main(["--shapes", "nope"]) == 2


@pytest.mark.slow
def test_static_equals_eager_on_smollm2_sharegpt():
    """Real weights, 32 ShareGPT test prompts, 128 new tokens, fp32 on CPU, greedy."""
    from dadpo.config import DataConfig
    from dadpo.data import load_in_domain
    from dadpo.modeling import load_model, load_tokenizer

    spec = "offline:smollm2-135m-instruct"
    tok, model = load_tokenizer(spec), load_model(spec, torch.float32, on=torch.device("cpu")).eval()
    prompts = list(load_in_domain(DataConfig())[1]["prompt"][:32])
    s = Sampling(temperature=0.0, max_new_tokens=128)
    ref, ref_st = generate(model, tok, prompts, s, "eager", cache=Cache.default(), batch_size=16, backend="eager")
    out, st = generate(model, tok, prompts, s, "static", cache=Cache.default(), batch_size=16, backend="static")
    assert out == ref and st["answers"] == ref_st["answers"]
    assert 0 < ref_st["cut_at_max_new_tokens"] < 32  # some answers end their turn, some are cut
