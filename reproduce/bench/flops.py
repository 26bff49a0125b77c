"""FLOPs of the benchmarked work.

Rows report model FLOPs of real tokens (padding excluded), the definition below. FlopCounterMode
(torch.utils.flop_counter) counts the matrix products that actually run, so it would count padding,
the LM head recomputed in backward and the masked half of causal attention; `counted_flops` is
used where that is what is wanted (the profile's LM-head micro-benchmark), and the tests check that
the formula and the counter agree on an unpadded batch (attention counted in full there).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

FORMULAS = """\
model FLOPs of real tokens (padding excluded). N_body = weights of the decoder layers' matrix
products (norm gains and biases, <0.1% of a real model, do no matmul), V d = LM head, d_att = heads x
head_dim, T = tokens, R = response tokens (the only positions whose next token is scored), s = each
sequence's length; causal attention counts half of PaLM's 12 L d_att s per token:
  train  6 N_body T + 6 V d R + 6 L d_att sum(s^2)
  infer  2 N_body T + 2 V d R + 2 L d_att sum(s^2)
MFU = achieved FLOP/s over the dense matmul rate measured in the same process (same device, dtype).
Generation floor: weight bytes read per decoding step (N_body + V d) / measured copy bandwidth
(bytes read + written); share = measured decoding tokens/s / floor tokens/s."""


@dataclass(frozen=True)
class Shape:
    layers: int
    d: int
    d_att: int
    vocab: int
    n_body: int
    n_total: int


def shape_of(model) -> Shape:
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    unique = {p.data_ptr(): p.numel() for p in model.parameters()}
    body = sum(p.numel() for p in model.get_decoder().layers.parameters() if p.dim() == 2)
    return Shape(cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads * head_dim,
                 model.get_output_embeddings().weight.shape[0], body, sum(unique.values()))


def model_flops(shape: Shape, lens: list[int], resp: int, train: bool, causal: bool = True) -> float:
    """Model FLOPs of one pass over sequences of real lengths `lens` with `resp` scored positions
    (`causal=False` counts the whole attention square, as FlopCounterMode does)."""
    c = 6 if train else 2
    att = shape.layers * shape.d_att * sum(s * s for s in lens) * (1 if causal else 2)
    return c * (shape.n_body * sum(lens) + shape.vocab * shape.d * resp + att)


def decode_weight_bytes(shape: Shape, dtype: torch.dtype) -> int:
    """Weights read per decoding step: every decoder layer plus the LM head (embedding rows: negligible)."""
    return (shape.n_body + shape.vocab * shape.d) * torch.tensor([], dtype=dtype).element_size()


def seq_stats(encs: list[dict]) -> tuple[list[int], int]:
    """(real length of each encoded sequence, scored response positions in all of them)."""
    return [len(e["input_ids"]) for e in encs], sum(sum(e["response_mask"]) for e in encs)


def counted_flops(fn) -> int:
    """FLOPs of the matrix products and attention kernels that fn() runs (FlopCounterMode)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()
