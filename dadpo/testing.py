"""Tiny models and tokenizers built on the spot, for tests and CPU smoke runs.

Random weights, a byte-level BPE tokenizer trained in a second on a few sentences, and a ChatML
chat template, saved as ordinary Hugging Face folders so that every code path (loading, chat
formatting, generation, training) runs on them exactly as on a real checkpoint.
"""
from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "Hello, how are you today? I am fine, thank you.",
    "Explain the theory of relativity in simple terms.",
    "Write a short poem about the sea and the sky.",
    "What is the capital of France? Paris is the capital.",
    "List three ways to improve sleep: routine, darkness, and less caffeine.",
    "def add(a, b): return a + b  # a python function",
    "The quick brown fox jumps over the lazy dog 0123456789.",
]


def tiny_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer with ChatML special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>",
                                   pad_token="<pad>", unk_token=None)
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_llama(tokenizer, hidden: int = 32, layers: int = 4, heads: int = 4, kv_heads: int = 2,
               intermediate: int = 64, seed: int = 0, vocab_size: int | None = None):
    """A random-weight Llama-architecture causal LM matching `tokenizer`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size or len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=intermediate,
                      max_position_embeddings=1024, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, bos_token_id=None, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_tiny_model(folder: str | Path, seed: int = 0, **kw) -> Path:
    """Build and save a tiny model + tokenizer folder; returns the folder."""
    folder = Path(folder)
    tok = tiny_tokenizer()
    model = tiny_llama(tok, seed=seed, **kw)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def attach_scores(examples: list[dict], model, pad_id: int, prefix: str) -> None:
    """Tests: sequence log-probs of both answers under `model` attached as `{prefix}_chosen` etc."""
    from dadpo.examples import answers_of, attach_sequence_scores
    from dadpo.precompute import sequence_logprobs

    attach_sequence_scores(examples, sequence_logprobs(model, answers_of(examples), pad_id), prefix)


def attach_topk(examples: list[dict], teacher, pad_id: int, k: int, answers=("chosen",), samples: int = 0) -> None:
    """Tests: the teacher's top-k cache (with `samples` tail samples) of each answer attached (`kd`, `kd_rejected`)."""
    from dadpo.examples import attach_teacher_topk
    from dadpo.precompute import teacher_topk

    for a in answers:
        attach_teacher_topk(examples, teacher_topk(teacher, [e[a] for e in examples], pad_id, k,
                                                   tail_samples=samples), a)
