"""Chat formatting, the tokenizer check, and the generation cache."""
import pytest
import torch

from dadpo.cache import Cache

from dadpo.chat import (TokenizerMismatch, check_tokenizers, encode_example, encode_examples, encode_prompt,
                        end_of_turn_ids, prompt_text)
from dadpo.generation import Sampling, _prompt_key, cache_file, generate
from dadpo.testing import tiny_tokenizer


def test_prompt_uses_chat_template(tok):
    text = prompt_text(tok, "Hi there")
    assert text == "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"


def test_encode_example_masks_prompt_and_ends_with_end_of_turn(tok):
    ex = encode_example(tok, "Hi there", "Hello!", max_len=512, max_prompt_tokens=256)
    ids, mask = ex["input_ids"], ex["response_mask"]
    assert len(ids) == len(mask)
    n_prompt = mask.index(1)
    assert ids[:n_prompt] == encode_prompt(tok, "Hi there", 256)
    response = tok.decode([i for i, m in zip(ids, mask) if m])
    assert response.startswith("Hello!<|im_end|>")
    assert tok.convert_tokens_to_ids("<|im_end|>") in ids[n_prompt:]


def test_encode_example_truncates_to_max_len(tok):
    ex = encode_example(tok, "Hi", "word " * 200, max_len=40, max_prompt_tokens=256)
    assert len(ex["input_ids"]) == 40 and sum(ex["response_mask"]) > 0


def test_encode_examples_batch_equals_one_at_a_time(tok):
    """The batched encoder (prompts shared, texts tokenized together) gives each example's own encoding,
    and warns once per truncated example as encoding them one by one does."""
    prompts = ["Hi", "long prompt " * 40, "Hi", "", "long prompt " * 40]
    responses = ["Hello!", "word " * 30, "Other answer", "x", ""]
    with pytest.warns(UserWarning) as one_by_one:
        expected = [encode_example(tok, p, r, max_len=48, max_prompt_tokens=24) for p, r in zip(prompts, responses)]
    with pytest.warns(UserWarning) as batched:
        got = encode_examples(tok, prompts, responses, max_len=48, max_prompt_tokens=24)
    assert got == expected
    assert len(batched) == len(one_by_one) == 2
    assert got[0]["input_ids"][:sum(1 for m in got[0]["response_mask"] if m == 0)] == encode_prompt(tok, "Hi", 24)
    assert encode_examples(tok, [], [], 48, 24) == []
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        encode_examples(tok, ["a", "b"], ["c"], 48, 24)


def test_long_prompt_truncated_with_warning(tok):
    with pytest.warns(UserWarning, match="truncated"):
        ids = encode_prompt(tok, "many words " * 100, 16)
    assert len(ids) == 16
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")  # the assistant header survives


def test_end_of_turn_ids(tok):
    assert tok.convert_tokens_to_ids("<|im_end|>") in end_of_turn_ids(tok)


def test_tokenizer_check_accepts_identical(tok):
    rep = check_tokenizers(tok, tiny_tokenizer(), 320, 320)
    assert rep["vocab"] == len(tok) and not rep["padded"]


def test_tokenizer_check_rejects_other_vocabulary(tok):
    other = tiny_tokenizer(vocab_size=300)
    with pytest.raises(TokenizerMismatch, match="vocabularies differ"):
        check_tokenizers(tok, other)


def test_tokenizer_check_padded_rows_need_opt_in(tok):
    with pytest.raises(TokenizerMismatch, match="allow_padded_vocab"):
        check_tokenizers(tok, tok, 320, 384)
    assert check_tokenizers(tok, tok, 320, 384, allow_padded_vocab=True)["padded"]
    with pytest.raises(TokenizerMismatch, match="fewer embedding rows"):
        check_tokenizers(tok, tok, 300, 384, allow_padded_vocab=True)


def test_generation_cache_hits_second_time(tok, tiny_model, monkeypatch):
    prompts = ["Hello", "What is the capital of France?", "Write a poem", "Hello"]
    s = Sampling(temperature=0.7, max_new_tokens=6, seed=3)
    a, st = generate(tiny_model, tok, prompts, s, "fp-a", cache=Cache.default(), batch_size=2)
    assert st["cached"] == 0 and st["new_tokens"] > 0 and len(a) == 4 and a[0] == a[3]
    calls = []
    monkeypatch.setattr(tiny_model, "generate", lambda *x, **k: calls.append(1))
    b, st2 = generate(tiny_model, tok, prompts, s, "fp-a", cache=Cache.default(), batch_size=2)
    assert b == a and st2["cached"] == 4 and not calls
    # any change of model or settings is a different cache entry
    assert cache_file(Cache.default(), "fp-b", tok, s) != cache_file(Cache.default(), "fp-a", tok, s)
    assert cache_file(Cache.default(), "fp-a", tok, Sampling(temperature=0.7, max_new_tokens=6, seed=4)) != cache_file(Cache.default(), "fp-a", tok, s)


@pytest.mark.parametrize("backend", ["eager", "static"])
def test_generation_is_seeded_and_batch_independent_when_greedy(tok, tiny_model, backend):
    prompts = ["Hello", "Explain the theory of relativity", "List three ways"]
    s = Sampling(temperature=0.0, max_new_tokens=5)
    a, _ = generate(tiny_model, tok, prompts, s, "fp-1", cache=Cache.default(), batch_size=3, backend=backend)
    b, _ = generate(tiny_model, tok, prompts, s, "fp-2", cache=Cache.default(), batch_size=1, backend=backend)
    assert a == b  # left padding does not change greedy answers


@pytest.mark.parametrize("backend", ["eager", "static"])
def test_generation_stops_at_end_of_turn_unless_told_to_ignore_it(tok, tiny_model, backend):
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    # make the model always emit end-of-turn: zero head weights, a bias on that token
    tiny_model.lm_head.weight = torch.nn.Parameter(torch.zeros_like(tiny_model.lm_head.weight))
    tiny_model.lm_head.bias = torch.nn.Parameter(torch.zeros(len(tok)))
    with torch.no_grad():
        tiny_model.lm_head.bias[eot] = 10.0
    prompts = ["Hello", "Write a poem about the sea"]
    a, st = generate(tiny_model, tok, prompts, Sampling(temperature=0.0, max_new_tokens=8), "fp-eot", cache=Cache.default(), backend=backend)
    assert a == ["", ""] and st["new_tokens"] == 2 and st["cut_at_max_new_tokens"] == 0
    assert st["answers"][_prompt_key("Hello")] == [1, True]
    # shape runs force full-length answers: the end-of-turn id neither stops nor cuts them
    full = Sampling(temperature=0.0, max_new_tokens=8, ignore_eos=True)
    a, st = generate(tiny_model, tok, prompts, full, "fp-eot", cache=Cache.default(), backend=backend)
    assert st["new_tokens"] == 16 and st["cut_at_max_new_tokens"] == 2
    assert sorted(st["answers"].values()) == [[8, False], [8, False]]
