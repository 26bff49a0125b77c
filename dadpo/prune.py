"""Structured pruning of the teacher into the Table-1 student (teacher minus 20% of params;
docs/method.md#reconstructions).

Two structured operations, both leaving an ordinary Hugging Face model folder:

- Layer removal (ShortGPT-style): drop the decoder layers with the lowest block influence
  BI_i = 1 - cos(h_in, h_out), averaged over non-padding calibration tokens. The first and last
  layers are never dropped (dropping the last layers breaks the model: docs/assets.md#pruning).
- Width pruning (LLM-Pruner-style units, simpler score): attention heads and MLP intermediate
  channels. Importance of a unit = RMS over calibration tokens of the L2 norm of the unit's additive
  contribution to the residual stream: for channel j, ||a_j|| * ||W_down[:, j]|| (exact, rank one);
  for head h, sqrt(trace(W_o,h^T W_o,h G_h)) with G_h the Gram matrix of the head's attention output.
  Activation-based, so no gradients are needed (LLM-Pruner's first-order Taylor score is not used).

HF Llama / Qwen2 configs hold one head count and one intermediate size for all layers, so width
pruning removes the SAME number of units in every layer (which units differs per layer). GQA stays
valid: a whole KV group or the same number of query heads in every kept group are removed.
Supported: architectures with model.model.layers[i].self_attn.{q,k,v,o}_proj and
mlp.{gate,up,down}_proj whose logits are lm_head(final hidden state) (Llama/SmolLM2, Qwen2).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dadpo.chat import encode_examples, encode_prompt, pad_batch, prompt_text
from dadpo.config import PRUNE_METHODS as METHODS, PruneConfig

DEFAULT_METHOD = PruneConfig().method  # one default, the config's (docs/method.md: pruning)


# ----------------------------------------------------------------------------- helpers

def count_params(model: nn.Module) -> int:
    """Unique parameters (tied input/output embeddings count once, as in num_parameters())."""
    return sum(p.numel() for p in model.parameters())


def _decoder(model):
    return model.get_decoder() if hasattr(model, "get_decoder") else model.model


def _layers(model) -> nn.ModuleList:
    return _decoder(model).layers


def _as_batches(input_ids_batches) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Accept tensors (no padding), dicts with input_ids/attention_mask, or (ids, mask) pairs."""
    out = []
    for b in input_ids_batches:
        if isinstance(b, dict):
            ids, mask = b["input_ids"], b.get("attention_mask")
        elif isinstance(b, (tuple, list)):
            ids, mask = b
        else:
            ids, mask = b, None
        ids = torch.as_tensor(ids)
        if ids.dim() == 1:
            ids = ids[None]
        mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask).reshape(ids.shape)
        out.append((ids, mask))
    if not out:
        raise ValueError("no calibration batches given")
    return out


def _run_decoder(model, ids, mask):
    dev = next(model.parameters()).device
    return _decoder(model)(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False)


def _pad_id(tokenizer) -> int:
    pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return 0 if pid is None else pid


def encode_calibration(tokenizer, prompts: Sequence[str], batch_size: int = 4,
                       max_len: int = 256) -> list[dict]:
    """Chat-formatted prompts as right-padded batches (over-long prompts keep their end)."""
    rows = [{"input_ids": encode_prompt(tokenizer, p, max_len)} for p in prompts]
    return [pad_batch(rows[i:i + batch_size], _pad_id(tokenizer), keys=("input_ids",))
            for i in range(0, len(rows), batch_size)]


# ----------------------------------------------------------------------------- block influence

@torch.no_grad()
def block_influence(model, input_ids_batches) -> list[float]:
    """Per decoder layer, 1 - cos(h_in, h_out) averaged over non-padding tokens.

    Layer inputs/outputs are taken with hooks rather than output_hidden_states: in transformers 5
    the last entry of hidden_states is after the final norm, which would distort the last layer.
    """
    layers = _layers(model)
    sums = torch.zeros(len(layers), dtype=torch.float64)
    state: dict = {}
    handles = []

    def pre(i):
        def hook(mod, args, kwargs):
            state[i] = args[0] if args else kwargs["hidden_states"]
        return hook

    def post(i):
        def hook(mod, args, kwargs, out):
            h_out = out[0] if isinstance(out, (tuple, list)) else out
            cos = F.cosine_similarity(state.pop(i).float(), h_out.float(), dim=-1)  # (B, T)
            sums[i] += ((1.0 - cos) * state["mask"]).sum().double().cpu()
        return hook

    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(pre(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(post(i), with_kwargs=True))
    was_training = model.training
    model.eval()
    tokens = 0
    try:
        for ids, mask in _as_batches(input_ids_batches):
            state["mask"] = mask.to(next(model.parameters()).device).float()
            tokens += int(mask.sum())
            _run_decoder(model, ids, mask)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return (sums / max(tokens, 1)).tolist()


# ----------------------------------------------------------------------------- layer removal

def drop_layers(model, drop: Iterable[int]) -> list[int]:
    """Remove decoder layers in place; renumber layer_idx (KV cache slots) and fix the config."""
    layers = _layers(model)
    n = len(layers)
    drop = sorted(set(int(i) for i in drop))
    if any(i < 0 or i >= n for i in drop) or len(drop) >= n:
        raise ValueError(f"cannot drop layers {drop} of {n}")
    keep = [i for i in range(n) if i not in drop]
    _decoder(model).layers = nn.ModuleList([layers[i] for i in keep])
    for new_i, layer in enumerate(_decoder(model).layers):
        for mod in (layer, getattr(layer, "self_attn", None)):
            if mod is not None and hasattr(mod, "layer_idx"):
                mod.layer_idx = new_i
    cfg = model.config
    old_n = cfg.num_hidden_layers
    cfg.num_hidden_layers = len(keep)
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    if getattr(cfg, "max_window_layers", None) is not None:  # Qwen2: layers below it use full attention
        cfg.max_window_layers = sum(1 for i in keep if i < min(cfg.max_window_layers, old_n))
    return drop


# ----------------------------------------------------------------------------- width pruning

@torch.no_grad()
def width_importance(model, input_ids_batches) -> dict:
    """Per layer: head scores (L, n_heads) and MLP channel scores (L, intermediate); see module doc."""
    layers = _layers(model)
    cfg = model.config
    n_heads, d = cfg.num_attention_heads, _head_dim(model)
    grams = [torch.zeros(n_heads, d, d, dtype=torch.float64) for _ in layers]
    sq = [torch.zeros(layer.mlp.down_proj.in_features, dtype=torch.float64) for layer in layers]
    state: dict = {}
    handles = []

    def valid(x):  # (B, T, F) -> (N, F), padding removed
        return x.reshape(-1, x.shape[-1])[state["mask"].reshape(-1)].double().cpu()

    def o_hook(i):
        def hook(mod, args):
            x = valid(args[0]).reshape(-1, n_heads, d)
            grams[i] += torch.einsum("nhd,nhe->hde", x, x)
        return hook

    def down_hook(i):
        def hook(mod, args):
            sq[i] += valid(args[0]).pow(2).sum(0)
        return hook

    for i, layer in enumerate(layers):
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(o_hook(i)))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(down_hook(i)))
    was_training = model.training
    model.eval()
    tokens = 0
    try:
        for ids, mask in _as_batches(input_ids_batches):
            state["mask"] = mask.bool().to(next(model.parameters()).device)
            tokens += int(mask.sum())
            _run_decoder(model, ids, mask)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    tokens = max(tokens, 1)
    heads, channels = [], []
    for i, layer in enumerate(layers):
        w_o = layer.self_attn.o_proj.weight.detach().double().cpu().reshape(-1, n_heads, d)  # (hid, H, d)
        m = torch.einsum("khd,khe->hde", w_o, w_o)
        heads.append(((m * grams[i]).sum((1, 2)).clamp_min(0) / tokens).sqrt())
        w_down = layer.mlp.down_proj.weight.detach().double().cpu()
        channels.append((sq[i] / tokens).sqrt() * w_down.norm(dim=0))
    return {"heads": torch.stack(heads), "channels": torch.stack(channels)}


def _head_dim(model) -> int:
    cfg = model.config
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _slice_linear(lin: nn.Linear, idx: torch.Tensor, dim: int) -> None:
    """Keep rows (dim=0, with the bias) or columns (dim=1) `idx` of a Linear, in place."""
    idx = idx.to(lin.weight.device)
    lin.weight = nn.Parameter(lin.weight.data.index_select(dim, idx).clone(),
                              requires_grad=lin.weight.requires_grad)
    if dim == 0:
        if lin.bias is not None:
            lin.bias = nn.Parameter(lin.bias.data.index_select(0, idx).clone(),
                                    requires_grad=lin.bias.requires_grad)
        lin.out_features = len(idx)
    else:
        lin.in_features = len(idx)


def config_loads(config, **changes) -> bool:
    """Whether a config with `changes` passes the config class's validation (loads with from_pretrained)."""
    d = config.to_dict()
    d.update(changes)
    try:
        type(config).from_dict(d)
    except Exception:  # strict-dataclass validation errors come in several types
        return False
    return True


def prune_heads(model, importance: torch.Tensor, keep_kv: int, keep_q_per_group: int) -> dict:
    """Keep `keep_kv` KV groups and `keep_q_per_group` query heads in each, per layer by importance.

    Returns {"removed": [[q head indices] per layer], "removed_kv": [[kv indices] per layer]}.
    """
    cfg = model.config
    n_heads, n_kv, d = cfg.num_attention_heads, cfg.num_key_value_heads, _head_dim(model)
    rep = n_heads // n_kv
    if not (1 <= keep_kv <= n_kv and 1 <= keep_q_per_group <= rep):
        raise ValueError(f"cannot keep {keep_kv} KV groups x {keep_q_per_group} heads of {n_kv} x {rep}")
    new_heads = keep_kv * keep_q_per_group
    if not config_loads(cfg, num_attention_heads=new_heads, num_key_value_heads=keep_kv, head_dim=d):
        raise ValueError(f"{type(cfg).__name__} rejects {new_heads} heads / {keep_kv} KV heads "
                         f"(hidden_size {cfg.hidden_size}); pick another head count")
    removed, removed_kv = [], []
    for li, layer in enumerate(_layers(model)):
        s = importance[li].reshape(n_kv, rep)
        groups = sorted(torch.topk(s.sum(1), keep_kv).indices.tolist())
        q_keep = []
        for g in groups:
            q_keep += [g * rep + j for j in sorted(torch.topk(s[g], keep_q_per_group).indices.tolist())]
        attn = layer.self_attn
        q_rows = torch.tensor([h * d + k for h in q_keep for k in range(d)])
        kv_rows = torch.tensor([g * d + k for g in groups for k in range(d)])
        _slice_linear(attn.q_proj, q_rows, 0)
        _slice_linear(attn.k_proj, kv_rows, 0)
        _slice_linear(attn.v_proj, kv_rows, 0)
        _slice_linear(attn.o_proj, q_rows, 1)
        attn.num_key_value_groups = keep_q_per_group
        attn.head_dim = d
        for name in ("num_heads", "num_attention_heads"):  # older/other attention classes keep counts
            if hasattr(attn, name):
                setattr(attn, name, new_heads)
        if hasattr(attn, "num_key_value_heads"):
            attn.num_key_value_heads = keep_kv
        removed.append([h for h in range(n_heads) if h not in q_keep])
        removed_kv.append([g for g in range(n_kv) if g not in groups])
    cfg.num_attention_heads, cfg.num_key_value_heads = new_heads, keep_kv
    cfg.head_dim = d  # explicit: hidden_size // heads no longer equals the head size
    return {"removed": removed, "removed_kv": removed_kv}


def prune_channels(model, importance: torch.Tensor, keep: int) -> list[list[int]]:
    """Keep the `keep` most important MLP channels in every layer; returns removed indices per layer."""
    inter = model.config.intermediate_size
    if not 1 <= keep <= inter:
        raise ValueError(f"cannot keep {keep} of {inter} MLP channels")
    removed = []
    for li, layer in enumerate(_layers(model)):
        idx = torch.tensor(sorted(torch.topk(importance[li], keep).indices.tolist()))
        mlp = layer.mlp
        _slice_linear(mlp.gate_proj, idx, 0)
        _slice_linear(mlp.up_proj, idx, 0)
        _slice_linear(mlp.down_proj, idx, 1)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = keep
        kept = set(idx.tolist())
        removed.append([j for j in range(inter) if j not in kept])
    model.config.intermediate_size = keep
    return removed


# ----------------------------------------------------------------------------- to a parameter share

def _layer_params(layer: nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters())


def _channel_params(layer) -> int:
    """Parameters one MLP channel holds in one layer (gate row, up row, down column, biases)."""
    mlp = layer.mlp
    return sum(lin.in_features + (lin.bias is not None) for lin in (mlp.gate_proj, mlp.up_proj)) \
        + mlp.down_proj.out_features


def _head_option_params(model, keep_kv: int, keep_q: int) -> int:
    """Parameters removed over all layers when keeping keep_kv groups x keep_q heads."""
    cfg, d = model.config, _head_dim(model)
    attn = _layers(model)[0].self_attn
    hid = cfg.hidden_size
    q_b = attn.q_proj.bias is not None
    kv_b = attn.k_proj.bias is not None
    q_removed = cfg.num_attention_heads - keep_kv * keep_q
    kv_removed = cfg.num_key_value_heads - keep_kv
    per_layer = q_removed * d * (2 * hid + q_b) + kv_removed * d * 2 * (hid + kv_b)
    return per_layer * len(_layers(model))


def _attn_params(model) -> int:
    attn = _layers(model)[0].self_attn
    return sum(p.numel() for p in attn.parameters()) * len(_layers(model))


def prune_to_share(model, calib_ids, target_share: float = 0.2, method: str = DEFAULT_METHOD,
                   heads: bool = False) -> tuple[nn.Module, dict]:
    """Remove about `target_share` of all parameters (embeddings are kept) in place.

    layers:        drop k lowest-influence layers, k giving the share closest to the target.
    layers+width:  drop the most layers that stay at or below the target, then close the gap with
                   MLP channels (same count in every layer).
    width:         MLP channels only (same count in every layer). With `heads=True`, first attention
                   heads at about the per-layer ratio the target needs (LLM-Pruner prunes heads and
                   channels at one ratio; head counts are coarse, so the nearest allowed count, never
                   past the target), then channels close the gap. Off by default: on SmolLM2 (9 heads
                   in 3 KV groups) the smallest head cut is a third of the query heads, and it cost
                   far more NLL than the same parameters taken from MLP channels (3.87 vs 2.79).
    Returns (model, report) with the achieved share.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not 0.0 < target_share < 1.0:
        raise ValueError(f"target_share must be in (0, 1), got {target_share}")
    if heads and method != "width":
        raise ValueError(f"heads=True applies to method 'width' only, not {method!r}")
    t0 = time.time()
    cfg = model.config
    before = count_params(model)
    goal = target_share * before
    n_layers = len(_layers(model))
    report = {
        "method": method, "heads_option": heads, "target_share": target_share, "params_before": before,
        "architecture": type(model).__name__, "score": "residual contribution norm (activation x weight)",
        "layers_before": n_layers, "heads_before": cfg.num_attention_heads,
        "kv_heads_before": cfg.num_key_value_heads, "intermediate_before": cfg.intermediate_size,
        "layers_removed": [], "heads_removed_per_layer": 0, "kv_heads_removed_per_layer": 0,
        "channels_removed_per_layer": 0,
    }

    if method in ("layers", "layers+width"):
        influence = block_influence(model, calib_ids)
        report["block_influence"] = [round(x, 6) for x in influence]
        per_layer = _layer_params(_layers(model)[0])
        order = sorted(range(1, n_layers - 1), key=lambda i: influence[i])  # never first / last
        if method == "layers":
            k = min(range(len(order) + 1), key=lambda k: (abs(k * per_layer - goal), k))
        else:
            k = min(int(goal // per_layer), len(order))
        report["layers_removed"] = drop_layers(model, order[:k])

    gap = goal - (before - count_params(model))
    if method in ("width", "layers+width") and gap > 0:
        imp = width_importance(model, calib_ids)
        if method == "width" and heads:
            _maybe_prune_heads(model, imp, gap, report)
            gap = goal - (before - count_params(model))
            if report["heads_removed_per_layer"] or report["kv_heads_removed_per_layer"]:
                imp["channels"] = width_importance(model, calib_ids)["channels"]  # heads changed inputs
        per_ch = _channel_params(_layers(model)[0]) * len(_layers(model))
        n_ch = min(max(int(round(gap / per_ch)), 0), cfg.intermediate_size - 1)
        if n_ch:
            prune_channels(model, imp["channels"], cfg.intermediate_size - n_ch)
        report["channels_removed_per_layer"] = n_ch

    after = count_params(model)
    report.update({
        "params_after": after, "achieved_share": (before - after) / before,
        "layers_after": len(_layers(model)), "heads_after": cfg.num_attention_heads,
        "kv_heads_after": cfg.num_key_value_heads, "intermediate_after": cfg.intermediate_size,
        "prune_seconds": round(time.time() - t0, 2),
    })
    return model, report


def _maybe_prune_heads(model, imp, gap: float, report: dict) -> None:
    """Prune heads at the allowed head count whose attention ratio is nearest the needed ratio."""
    cfg = model.config
    n_kv, rep = cfg.num_key_value_heads, cfg.num_attention_heads // cfg.num_key_value_heads
    layer_total = _layer_params(_layers(model)[0]) * len(_layers(model))
    ratio = gap / layer_total  # share of every layer that must go
    attn_total = _attn_params(model)
    best = None
    for kv in range(1, n_kv + 1):
        for q in range(1, rep + 1):
            removed = _head_option_params(model, kv, q)
            if removed > gap or not config_loads(cfg, num_attention_heads=kv * q, num_key_value_heads=kv,
                                                 head_dim=_head_dim(model)):
                continue
            key = (abs(removed / attn_total - ratio), -kv)  # ties: keep more KV groups
            if best is None or key < best[0]:
                best = (key, kv, q)
    if best is None or (best[1], best[2]) == (n_kv, rep):
        return
    info = prune_heads(model, imp["heads"], best[1], best[2])
    report["heads_removed_per_layer"] = len(info["removed"][0])
    report["kv_heads_removed_per_layer"] = len(info["removed_kv"][0])
    report["heads_removed"] = info["removed"]


# ----------------------------------------------------------------------------- held-out NLL

@torch.no_grad()
def response_nll(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 4,
                 max_len: int = 512) -> float:
    """Mean per-token NLL of the responses given the chat-formatted prompts (token-weighted).

    Logits are computed only at response positions (lm_head on selected hidden states), so
    full-vocabulary logits of the whole batch are never held.
    """
    if len(prompts) != len(responses) or not prompts:
        raise ValueError("need as many responses as prompts, at least one")
    # the prompt keeps its last max_len / 2 tokens (the assistant header), the answer the rest
    rows = encode_examples(tokenizer, list(prompts), list(responses), max_len, max_len // 2)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))  # less padding
    dev = next(model.parameters()).device
    head = model.get_output_embeddings()
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for s in range(0, len(order), batch_size):
            b = pad_batch([rows[i] for i in order[s:s + batch_size]], _pad_id(tokenizer))
            ids, mask = b["input_ids"], b["attention_mask"]
            labels = ids.masked_fill(b["response_mask"] == 0, -100)
            tgt = labels[:, 1:]
            sel = (tgt != -100).to(dev)
            h = _run_decoder(model, ids, mask).last_hidden_state[:, :-1]
            logits = head(h[sel]).float()
            total += F.cross_entropy(logits, tgt.to(dev)[sel], reduction="sum").item()
            count += int(sel.sum())
    finally:
        model.train(was_training)
    return total / max(count, 1)


# ----------------------------------------------------------------------------- the student folder

def _greedy_sample(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    ids = tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False, return_tensors="pt").input_ids
    ids = ids.to(next(model.parameters()).device)  # the mask made from it must be on the model's device too
    out = model.generate(ids, attention_mask=torch.ones_like(ids),
                         max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=_pad_id(tokenizer))
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def report_path(out_dir: str | Path) -> Path:
    """The report JSON lies beside the model folder: <out_dir>.report.json."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".report.json")


def make_pruned_student(teacher_dir: str, out_dir: str, target_share: float = 0.2,
                        method: str = DEFAULT_METHOD, calib_prompts: Sequence[str] = (),
                        heldout: Sequence[tuple[str, str]] = (), batch_size: int = 4, max_len: int = 512,
                        sample_new_tokens: int = 32, heads: bool = False, tokenizer=None) -> dict:
    """Load the teacher (fp32), prune it, save a plain model folder atomically, report beside it.

    The report (also written as <out_dir>.report.json, checksummed) holds params before/after,
    achieved share, layers / heads / channels removed, teacher and student held-out response NLL,
    a greedy sample of each on the first held-out prompt, and the time taken.
    """
    from dadpo.cache import atomic_path, write_json
    from dadpo.modeling import load_model, load_tokenizer

    if not calib_prompts:
        raise ValueError("make_pruned_student needs calibration prompts")
    t0 = time.time()
    tok = tokenizer or load_tokenizer(teacher_dir)  # the pipeline's (its chat template may be set by the config)
    model = load_model(teacher_dir, torch.float32)
    model.eval()
    hp, hr = [h[0] for h in heldout], [h[1] for h in heldout]
    first = hp[0] if hp else calib_prompts[0]
    teacher_nll = response_nll(model, tok, hp, hr, batch_size, max_len) if heldout else None
    teacher_sample = _greedy_sample(model, tok, first, sample_new_tokens) if sample_new_tokens else None
    calib = encode_calibration(tok, calib_prompts, batch_size, max_len)
    model, report = prune_to_share(model, calib, target_share, method, heads=heads)
    student_nll = response_nll(model, tok, hp, hr, batch_size, max_len) if heldout else None
    student_sample = _greedy_sample(model, tok, first, sample_new_tokens) if sample_new_tokens else None
    report.update({
        "teacher": str(teacher_dir), "out_dir": str(out_dir), "n_calibration": len(calib_prompts),
        "n_heldout": len(heldout), "max_len": max_len,
        "teacher_nll": teacher_nll, "student_nll": student_nll,
        "sample_prompt": first, "teacher_sample": teacher_sample, "student_sample": student_sample,
    })
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:  # a temp name beside out_dir; renamed when complete
        os.unlink(tmp)
        # on a GPU the pipeline trains in bf16 autocast: bf16 weights halve the disk (a pruned 7B: 11 GB)
        (model.to(torch.bfloat16) if next(model.parameters()).is_cuda else model).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if out_dir.exists():  # os.replace cannot overwrite a non-empty folder: move the old one away
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            shutil.rmtree(old, ignore_errors=True)
    report["seconds"] = round(time.time() - t0, 2)
    write_json(report_path(out_dir), report)
    return report


# ----------------------------------------------------------------------------- CLI

def _cli_data(args) -> tuple[list[str], list[tuple[str, str]]]:
    """Calibration prompts from the training split, held-out (prompt, reference) from the test split."""
    try:
        from dadpo.data import load_in_domain
    except ImportError as e:
        raise SystemExit(f"dadpo.prune: calibration/held-out prompts come from dadpo.data.load_in_domain, "
                         f"which is not available ({e}); call make_pruned_student() with your own prompts")
    from dadpo.config import ExperimentConfig, load_config

    cfg = load_config(args.config) if args.config else ExperimentConfig().validate()
    cfg.data.n_test = max(cfg.data.n_test, args.heldout)
    cfg.data.n_train = max(cfg.data.n_train, args.calib or cfg.models.prune.calibration_prompts)
    train, test = load_in_domain(cfg.data)
    n_calib = args.calib or cfg.models.prune.calibration_prompts
    calib = list(train["prompt"])[:n_calib]  # list() also turns a datasets Column into a list
    held = list(zip(list(test["prompt"])[: args.heldout], list(test["reference"])[: args.heldout]))
    return calib, held


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dadpo.prune",
                                 description="Prune a teacher into the Table-1 student and print the report.")
    ap.add_argument("--teacher", required=True, help="offline:NAME, a local folder, or a hub id")
    ap.add_argument("--out", required=True, help="output model folder (report goes to <out>.report.json)")
    ap.add_argument("--share", type=float, default=0.2, help="share of parameters to remove")
    ap.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD)
    ap.add_argument("--calib", type=int, default=None,
                    help="calibration prompts (default: models.prune.calibration_prompts)")
    ap.add_argument("--heldout", type=int, default=64, help="held-out replies for the NLL check")
    ap.add_argument("--heads", action="store_true", help="width: prune attention heads too")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--config", default=None, help="experiment YAML whose data section picks the prompts")
    args = ap.parse_args(argv)
    teacher = args.teacher
    if teacher.startswith("offline:"):
        from dadpo.assets import resolve_model

        teacher = resolve_model(teacher)
    calib, held = _cli_data(args)
    report = make_pruned_student(str(teacher), args.out, args.share, args.method, calib, held,
                                 batch_size=args.batch_size, max_len=args.max_len, heads=args.heads)
    report.pop("heads_removed", None)
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
