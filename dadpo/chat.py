"""Chat formatting with the teacher's template, and the teacher/student tokenizer check.

Both models see exactly the same token ids for the same conversation: the teacher's tokenizer and
chat template are used for teacher and student alike (white-box distillation needs a shared
vocabulary, docs/method.md#notation).
"""
from __future__ import annotations

import warnings

import torch

PROBE_TEXTS = (
    "Hello, world! How are you today?",
    "def f(x):\n    return x ** 2  # square",
    "Ünïcödé — 東京 café 123.45 🙂",
    "   leading spaces and\ttabs\n\nnew lines",
)


# Chat templates by family: given to tokenizers that carry none (a GGUF without one; Vicuna's hub
# tokenizer, whose template lives in FastChat's code), or chosen with `models.chat_template`. The
# ChatML ones are what the hub tokenizers ship, without Qwen's tool-calling branches; vicuna_v1.1 is
# FastChat's conversation template for Vicuna v1.1-v1.5.
CHAT_TEMPLATES = {
    "smollm2": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
        "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    "qwen2.5": (
        "{% if messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}"
        "{% endif %}{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    "vicuna_v1.1": (
        "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
        "{% set messages = messages[1:] %}{% else %}{% set system = \"A chat between a curious user and an "
        "artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the "
        "user's questions.\" %}{% endif %}{{ bos_token + system }}{% for message in messages %}"
        "{% if message['role'] == 'user' %}{{ ' USER: ' + message['content'] }}"
        "{% else %}{{ ' ASSISTANT: ' + message['content'] + eos_token }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ ' ASSISTANT:' }}{% endif %}"),
}

CHAT_STOP_TOKENS = {"smollm2": ("<|im_end|>",), "qwen2.5": ("<|im_end|>", "<|endoftext|>"),
                    "vicuna_v1.1": ("</s>",)}


class TokenizerMismatch(ValueError):
    """Teacher and student tokenizers disagree; white-box distillation needs them identical."""


def check_tokenizers(teacher_tok, student_tok, teacher_rows: int | None = None,
                     student_rows: int | None = None, allow_padded_vocab: bool = False) -> dict:
    """Check that two tokenizers give the same ids for the same text and share a vocabulary.

    `*_rows` are the models' embedding rows. Rows beyond the tokenizer (e.g. Qwen's 151936 vs
    152064 padded rows) are accepted only with `allow_padded_vocab`; KD then compares the first
    `len(tokenizer)` logits. Returns a report; raises TokenizerMismatch with a one-line reason.
    """
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        tv, sv = teacher_tok.get_vocab(), student_tok.get_vocab()
        raise TokenizerMismatch(
            f"teacher and student vocabularies differ ({len(tv)} vs {len(sv)} entries, "
            f"{len(set(tv.items()) ^ set(sv.items()))} differing); distillation needs a shared tokenizer")
    for text in PROBE_TEXTS:
        a = teacher_tok(text, add_special_tokens=False).input_ids
        b = student_tok(text, add_special_tokens=False).input_ids
        if a != b:
            raise TokenizerMismatch(f"teacher and student tokenize {text[:30]!r} differently")
    for attr in ("eos_token_id", "bos_token_id"):
        if getattr(teacher_tok, attr) != getattr(student_tok, attr):
            raise TokenizerMismatch(f"teacher and student differ in {attr}: "
                                    f"{getattr(teacher_tok, attr)} vs {getattr(student_tok, attr)}")
    n = len(teacher_tok)
    report = {"vocab": n, "teacher_rows": teacher_rows, "student_rows": student_rows, "padded": False}
    if teacher_rows is not None and student_rows is not None and teacher_rows != student_rows:
        if not allow_padded_vocab:
            raise TokenizerMismatch(
                f"embedding rows differ (teacher {teacher_rows}, student {student_rows}, tokenizer {n}); "
                "set models.allow_padded_vocab=true if the extra rows are padding")
        if min(teacher_rows, student_rows) < n:
            raise TokenizerMismatch(f"a model has fewer embedding rows ({min(teacher_rows, student_rows)}) "
                                    f"than the tokenizer has tokens ({n})")
        report["padded"] = True
    return report


def end_of_turn_ids(tokenizer, generation_config=None) -> list[int]:
    """Token ids that end an assistant turn: eos, the template's end-of-turn marker, the model's eos."""
    ids = {tokenizer.eos_token_id}
    for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        tid = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    gen_eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return sorted(i for i in ids if i is not None)


def prompt_text(tokenizer, prompt: str) -> str:
    """The chat-formatted prompt, ending where the assistant's answer starts."""
    if not tokenizer.chat_template:
        raise ValueError("the teacher tokenizer has no chat template; give a chat model or set one")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def _keep_end(ids: list[int], max_prompt_tokens: int) -> list[int]:
    if len(ids) > max_prompt_tokens:
        warnings.warn(f"prompt of {len(ids)} tokens truncated to {max_prompt_tokens} (kept the end)", stacklevel=3)
        ids = ids[-max_prompt_tokens:]
    return ids


def encode_prompt(tokenizer, prompt: str, max_prompt_tokens: int) -> list[int]:
    """Prompt ids; over-long prompts keep their last tokens (the template's assistant header)."""
    return _keep_end(tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False).input_ids, max_prompt_tokens)


def _response_text(tokenizer, prompt: str, response: str) -> str:
    """What the template adds after the generation prompt for an assistant turn holding `response`."""
    prefix = prompt_text(tokenizer, prompt)
    full = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(prefix):  # templates that rewrite earlier turns: fall back to eos marking
        return response + (tokenizer.eos_token or "")
    return full[len(prefix):]


def encode_examples(tokenizer, prompts: list[str], responses: list[str], max_len: int,
                    max_prompt_tokens: int) -> list[dict]:
    """Token ids of each prompt + response + end-of-turn, with the response mask.

    The response part is what the template adds after the generation prompt for an assistant
    turn holding the response (so it ends with the template's end-of-turn marker, which the model
    must learn to emit). Sequences longer than max_len lose the end of the response. Texts are
    tokenized in batches (the fast tokenizer's threads) and each distinct prompt once."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not prompts:
        return []
    distinct = list(dict.fromkeys(prompts))
    p_ids = dict(zip(distinct, tokenizer([prompt_text(tokenizer, p) for p in distinct],
                                         add_special_tokens=False).input_ids))
    suffixes = [_response_text(tokenizer, p, r) for p, r in zip(prompts, responses)]
    r_all = tokenizer(suffixes, add_special_tokens=False).input_ids
    out = []
    for p, r_ids in zip(prompts, r_all):
        ids = _keep_end(p_ids[p], max_prompt_tokens)
        r_ids = r_ids[: max(1, max_len - len(ids))]
        out.append({"input_ids": ids + r_ids, "response_mask": [0] * len(ids) + [1] * len(r_ids)})
    return out


def encode_example(tokenizer, prompt: str, response: str, max_len: int, max_prompt_tokens: int) -> dict:
    """One example of encode_examples."""
    return encode_examples(tokenizer, [prompt], [response], max_len, max_prompt_tokens)[0]


def pad_batch(rows: list[dict], pad_id: int, keys=("input_ids", "response_mask"), left: bool = False) -> dict:
    """Pad a list of encoded examples to one tensor per key plus `attention_mask`."""
    width = max(len(r["input_ids"]) for r in rows)
    out = {}
    for k in keys:
        fill = pad_id if k == "input_ids" else 0
        seqs = [r[k] + [fill] * (width - len(r[k])) if not left else [fill] * (width - len(r[k])) + r[k]
                for r in rows]
        out[k] = torch.tensor(seqs, dtype=torch.long)
    lens = [len(r["input_ids"]) for r in rows]
    out["attention_mask"] = torch.tensor(
        [[1] * n + [0] * (width - n) if not left else [0] * (width - n) + [1] * n for n in lens], dtype=torch.long)
    return out
