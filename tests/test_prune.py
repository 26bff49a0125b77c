"""Structured pruning (dadpo.prune) on tiny Llama and Qwen2 models built here."""
import json
import sys
import types

import pytest
import torch

from dadpo import prune
from dadpo.cache import read_json
from dadpo.chat import encode_example, prompt_text
from dadpo.config import load_config
from dadpo.testing import tiny_llama

PROMPTS = ["Hello, how are you today?", "Write a short poem about the sea and the sky.",
           "What is the capital of France?", "List three ways to improve sleep.",
           "def add(a, b): return a + b", "Explain the theory of relativity in simple terms."]
REPLIES = ["I am fine, thank you.", "The sea is blue, the sky is wide.", "Paris is the capital.",
           "Routine, darkness, and less caffeine.", "It adds two numbers.", "Time is relative."]
# Big enough for every method to get near 20%: one channel row is ~0.3% of the parameters.
BIG = dict(hidden=64, layers=8, heads=4, kv_heads=2, intermediate=256)
WIDTH_TOL = 0.005  # width methods: within ~one MLP channel per layer of the target


def llama(tok, seed=0, **kw):
    return tiny_llama(tok, seed=seed, **{**BIG, **kw}).eval()


def qwen2(tok, seed=0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, num_hidden_layers=8, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=256, max_position_embeddings=512,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
                      tie_word_embeddings=False)
    model = Qwen2ForCausalLM(cfg).eval()
    assert model.model.layers[0].self_attn.q_proj.bias is not None  # Qwen2 q/k/v carry biases
    for p in model.parameters():  # random biases, so pruning them wrongly would show in the logits
        if p.dim() == 1:
            torch.nn.init.normal_(p, std=0.02)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


@pytest.fixture(scope="module")
def calib(tok):
    return prune.encode_calibration(tok, PROMPTS, batch_size=3)


def _check_runs(model, tok):
    """Forward, and greedy generation with the KV cache equal to generation without it."""
    ids = tok(prompt_text(tok, PROMPTS[0]), add_special_tokens=False, return_tensors="pt").input_ids
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, return_dict_in_generate=True,
              output_logits=True, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        model(ids)
        a = model.generate(ids, use_cache=True, **kw)
        b = model.generate(ids, use_cache=False, **kw)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(torch.stack(a.logits), torch.stack(b.logits), rtol=1e-4, atol=1e-4)


def _logits(model, calib):
    with torch.no_grad():
        return model(**calib[0]).logits


def test_drop_layers_shapes_config_and_cache(tok, calib):
    model = llama(tok)
    kept = [model.model.layers[i] for i in (0, 1, 3, 5, 7)]
    prune.drop_layers(model, [2, 4, 6])
    assert list(model.model.layers) == kept
    assert model.config.num_hidden_layers == 5
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(5))
    _check_runs(model, tok)
    with pytest.raises(ValueError):
        prune.drop_layers(model, [9])


def test_layer_types_follow_dropped_layers(tok):
    model = qwen2(tok)
    model.config.layer_types = ["full_attention", "sliding_attention"] * 4
    prune.drop_layers(model, [1, 2])
    assert model.config.layer_types == ["full_attention", "sliding_attention"] * 3  # kept 0, 3, 4, 5, 6, 7


def test_width_pruning_shapes(tok, calib):
    model = llama(tok)
    imp = prune.width_importance(model, calib)
    assert imp["heads"].shape == (8, 4) and imp["channels"].shape == (8, 256)
    info = prune.prune_heads(model, imp["heads"], keep_kv=2, keep_q_per_group=1)
    assert all(len(r) == 2 for r in info["removed"])
    prune.prune_channels(model, imp["channels"], keep=200)
    attn, mlp = model.model.layers[3].self_attn, model.model.layers[3].mlp
    assert attn.q_proj.weight.shape == (2 * 16, 64) and attn.o_proj.weight.shape == (64, 2 * 16)
    assert attn.k_proj.weight.shape == (2 * 16, 64)
    assert mlp.gate_proj.weight.shape == (200, 64) and mlp.down_proj.weight.shape == (64, 200)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (2, 2)
    assert model.config.head_dim == 16 and model.config.intermediate_size == 200
    _check_runs(model, tok)
    # Whole KV groups: one group of two query heads left.
    model = llama(tok)
    info = prune.prune_heads(model, imp["heads"], keep_kv=1, keep_q_per_group=2)
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (16, 64)
    assert all(len(r) == 1 for r in info["removed_kv"])
    _check_runs(model, tok)


def test_pruning_dead_units_keeps_the_function(tok, calib):
    """Heads / channels whose output weights are zero score zero, are the ones removed, and the
    pruned model computes exactly what the unpruned one did."""
    model = llama(tok)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[:, 16:32] = 0  # head 1 (group 0) adds nothing
            layer.self_attn.o_proj.weight[:, 48:64] = 0  # head 3 (group 1) adds nothing
            layer.mlp.down_proj.weight[:, 10:20] = 0
    ref = _logits(model, calib)
    imp = prune.width_importance(model, calib)
    assert (imp["heads"][:, [1, 3]] == 0).all() and (imp["heads"][:, [0, 2]] > 0).all()
    assert (imp["channels"][:, 10:20] == 0).all()
    info = prune.prune_heads(model, imp["heads"], keep_kv=2, keep_q_per_group=1)
    assert all(r == [1, 3] for r in info["removed"])
    removed = prune.prune_channels(model, imp["channels"], keep=246)
    assert all(r == list(range(10, 20)) for r in removed)
    torch.testing.assert_close(_logits(model, calib), ref, rtol=1e-4, atol=1e-5)


def test_block_influence_finds_passthrough_layer(tok, calib):
    model = llama(tok)
    with torch.no_grad():
        for i in (0, 4):  # residual passthrough: attention and MLP add nothing
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    bi = prune.block_influence(model, calib)
    assert len(bi) == 8 and abs(bi[4]) < 1e-6 and abs(bi[0]) < 1e-6
    assert min(bi[i] for i in range(8) if i not in (0, 4)) > 1e-4
    _, report = prune.prune_to_share(model, calib, 0.1, "layers")
    assert report["layers_removed"] == [4]  # layer 0 is as idle but the first layer is never dropped


def test_block_influence_ignores_padding(tok):
    model = llama(tok)
    batch = prune.encode_calibration(tok, PROMPTS[:2], batch_size=2)
    assert (batch[0]["attention_mask"] == 0).any()
    singles = prune.encode_calibration(tok, PROMPTS[:2], batch_size=1)
    a = torch.tensor(prune.block_influence(model, batch))
    n = [int(s["attention_mask"].sum()) for s in singles]
    b = sum(torch.tensor(prune.block_influence(model, [s])) * k for s, k in zip(singles, n)) / sum(n)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", prune.METHODS)
def test_prune_to_share_hits_target(tok, calib, method):
    model = llama(tok)
    total = prune.count_params(model)
    layer_share = sum(p.numel() for p in model.model.layers[0].parameters()) / total
    model, report = prune.prune_to_share(model, calib, 0.2, method)
    tol = layer_share / 2 if method == "layers" else WIDTH_TOL
    assert report["params_before"] == total
    assert report["params_after"] == prune.count_params(model)
    assert abs(report["achieved_share"] - 0.2) <= tol, report
    assert 0 not in report["layers_removed"] and 7 not in report["layers_removed"]
    if method == "width":  # MLP channels only by default
        assert report["layers_after"] == 8 and report["channels_removed_per_layer"] > 0
        assert report["heads_after"] == report["heads_before"]
    _check_runs(model, tok)


def test_prune_to_share_rejects_bad_arguments(tok, calib):
    for kw in ({"method": "heads"}, {"target_share": 1.0}, {"method": "layers", "heads": True}):
        with pytest.raises(ValueError):
            prune.prune_to_share(llama(tok), calib, **kw)


def test_saved_folder_reloads_with_identical_logits(tok, calib, tmp_path):
    from transformers import AutoModelForCausalLM

    for name, model in (("llama", llama(tok)), ("qwen2", qwen2(tok))):
        model, report = prune.prune_to_share(model, calib, 0.25, "width", heads=True)
        assert report["heads_after"] < report["heads_before"]  # heads and channels both pruned
        assert abs(report["achieved_share"] - 0.25) <= WIDTH_TOL
        model.save_pretrained(tmp_path / name)
        again = AutoModelForCausalLM.from_pretrained(tmp_path / name).eval()
        torch.testing.assert_close(_logits(again, calib), _logits(model, calib), rtol=0, atol=0)
        _check_runs(again, tok)


def test_qwen2_layers_and_width(tok, calib, tmp_path):
    from transformers import AutoModelForCausalLM

    model, report = prune.prune_to_share(qwen2(tok), calib, 0.2, "layers+width")
    assert report["layers_removed"] and report["channels_removed_per_layer"] > 0
    assert abs(report["achieved_share"] - 0.2) <= WIDTH_TOL
    assert len(model.config.layer_types) == model.config.num_hidden_layers
    _check_runs(model, tok)
    model.save_pretrained(tmp_path / "q")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "q").eval()
    torch.testing.assert_close(_logits(again, calib), _logits(model, calib), rtol=0, atol=0)


def test_response_nll_matches_the_model_loss(tok):
    model = llama(tok)
    nlls, counts = [], []
    for p, r in zip(PROMPTS[:3], REPLIES[:3]):
        enc = encode_example(tok, p, r, 512, 256)  # as response_nll encodes: the prompt keeps max_len / 2
        ids, plen = enc["input_ids"], enc["response_mask"].index(1)
        labels = torch.tensor([[-100] * plen + ids[plen:]])
        with torch.no_grad():
            nlls.append(model(torch.tensor([ids]), labels=labels).loss.item())
        counts.append(len(ids) - plen)
        assert tok.decode(ids[plen:]).endswith("<|im_end|>\n")  # the end-of-turn marker is scored too
    one = prune.response_nll(model, tok, PROMPTS[:1], REPLIES[:1])
    assert one == pytest.approx(nlls[0], rel=1e-5)
    mixed = prune.response_nll(model, tok, PROMPTS[:3], REPLIES[:3], batch_size=2)  # with padding
    assert mixed == pytest.approx(sum(n * c for n, c in zip(nlls, counts)) / sum(counts), rel=1e-5)


def _teacher_dir(tok, tmp_path):
    folder = tmp_path / "teacher"
    llama(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_make_pruned_student_folder_and_report(tok, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    teacher = _teacher_dir(tok, tmp_path)
    out = tmp_path / "student"
    held = list(zip(PROMPTS[3:], REPLIES[3:]))
    report = prune.make_pruned_student(str(teacher), str(out), 0.2, "layers+width", PROMPTS[:3], held,
                                       sample_new_tokens=4)
    assert abs(report["achieved_share"] - 0.2) <= WIDTH_TOL
    assert report["teacher_nll"] > 0 and report["student_nll"] > 0 and report["seconds"] >= 0
    assert read_json(prune.report_path(out)) == json.loads(json.dumps(report))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    student = AutoModelForCausalLM.from_pretrained(out).eval()
    assert prune.count_params(student) == report["params_after"]
    assert student.config.num_hidden_layers == report["layers_after"]
    assert AutoTokenizer.from_pretrained(out).get_vocab() == tok.get_vocab()
    assert (out / "generation_config.json").is_file()
    _check_runs(student, tok)
    # Rerun with another method replaces the folder.
    again = prune.make_pruned_student(str(teacher), str(out), 0.2, "layers", PROMPTS[:3], held,
                                      sample_new_tokens=0)
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == again["layers_after"]
    with pytest.raises(ValueError):
        prune.make_pruned_student(str(teacher), str(tmp_path / "x"), 0.2, "layers", [], held)


def test_cli_uses_in_domain_data(tok, tmp_path, monkeypatch, capsys):
    teacher = _teacher_dir(tok, tmp_path)
    fake = types.ModuleType("dadpo.data")
    seen = []

    def load_in_domain(data_cfg):
        seen.append(data_cfg)
        return ({"prompt": PROMPTS[:4], "reference": REPLIES[:4]}, {"prompt": PROMPTS[4:], "reference": REPLIES[4:]})

    fake.load_in_domain = load_in_domain
    monkeypatch.setitem(sys.modules, "dadpo.data", fake)
    out = tmp_path / "cli_student"
    assert prune.main(["--teacher", str(teacher), "--out", str(out), "--method", "width", "--heads", "--calib", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["method"] == "width" and report["heads_after"] < report["heads_before"]
    assert prune.DEFAULT_METHOD == load_config().models.prune.method  # one default: the config's
    assert report["n_calibration"] == 3 and report["n_heldout"] == 2
    assert type(seen[0]).__name__ == "DataConfig" and seen[0].n_test >= 64  # held-out count asked for
    assert (out / "config.json").is_file()
    monkeypatch.setitem(sys.modules, "dadpo.data", None)  # module not written yet -> a clear error
    with pytest.raises(SystemExit, match="dadpo.data"):
        prune.main(["--teacher", str(teacher), "--out", str(tmp_path / "y")])
