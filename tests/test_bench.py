"""reproduce.bench on tiny models: FLOPs, result rows, TRL layouts and parity, the train stage's rows
(no timing is asserted)."""
import json
import math

import pytest
import torch

from reproduce.bench import cases, flops, rows, train, trl_adapters
from reproduce.bench.__main__ import parse_args
from reproduce.bench.kd_topk import kd_full_and_trl
from reproduce.bench.measure import model_bytes


def _pairs(n=3, vocab=300, seed=0):
    exs = cases.synthetic_pairs(n, vocab, seed, prompt=(3, 6), chosen=(4, 9), rejected=(2, 9), max_len=20)
    g = torch.Generator().manual_seed(seed)
    for e in exs:  # arbitrary frozen log-probs, so DPO margins are not 0
        for k in ("ref_chosen", "ref_rejected", "te_chosen", "te_rejected"):
            e[k] = float(-20 * torch.rand((), generator=g))
            e[k + "_count"] = 1
    return exs


def _eager_tiny_qwen():
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    cfg = Qwen2Config(**cases.QWEN_SHAPES["tiny-student"], eos_token_id=2, pad_token_id=3)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")  # attention as countable matmuls


def test_flops_formula_agrees_with_flop_counter_on_an_unpadded_batch():
    m = _eager_tiny_qwen()
    s = flops.shape_of(m)
    assert (s.layers, s.d, s.d_att, s.vocab) == (2, 64, 64, 512)
    assert s.n_body == sum(p.numel() for p in m.model.layers.parameters() if p.dim() == 2)
    assert s.n_total == sum(p.numel() for p in m.parameters())  # tied head counted once
    B, L, r = 3, 12, 5  # equal lengths: no padding; the last r positions scored
    ids = torch.randint(10, 500, (B, L), generator=torch.Generator().manual_seed(0))

    def train_step():
        m(input_ids=ids, logits_to_keep=r).logits.float().logsumexp(-1).sum().backward()

    with torch.no_grad():
        infer = flops.counted_flops(lambda: m(input_ids=ids, logits_to_keep=r))
    assert infer == flops.model_flops(s, [L] * B, B * r, train=False, causal=False)
    assert flops.counted_flops(train_step) == flops.model_flops(s, [L] * B, B * r, train=True, causal=False)
    # the reported definition counts the causal half of attention and real tokens only
    causal = flops.model_flops(s, [3, 5], 4, train=True)
    assert causal == 6 * (s.n_body * 8 + 512 * 64 * 4 + 2 * 64 * (9 + 25))
    assert flops.model_flops(s, [3, 5], 4, train=False) == causal // 3
    assert flops.decode_weight_bytes(s, torch.bfloat16) == 2 * (s.n_body + 512 * 64)
    assert model_bytes(torch.nn.Linear(4, 4, bias=False)) == 64


def test_rows_merge_by_key_and_provenance_keeps_earlier_stage_runs(tmp_path):
    csv_path, prov = tmp_path / "perf.csv", tmp_path / "perf.provenance.json"
    old = [{"case": "cpu-x", "device": "cpu", "stage": "train", "implementation": "ddpo", "tokens_per_s": 1.0},
           {"case": "cpu-x", "device": "cpu", "stage": "score", "implementation": "seq", "tokens_per_s": 2.0}]
    rows.merge_into(csv_path, prov, old, {"cpu-x": {"utc": "t1", "stage_runs": {"train": "t1", "score": "t1"}}})
    new = [{"case": "cpu-x", "device": "cpu", "stage": "train", "implementation": "ddpo", "tokens_per_s": 3.5},
           {"case": "gpu-y", "device": "cuda", "stage": "train", "implementation": "ddpo", "tokens_per_s": 9.0}]
    rows.merge_into(csv_path, prov, new, {"cpu-x": {"utc": "t2", "stage_runs": {"train": "t2"}}, "gpu-y": {}})
    got = {(r["case"], r["implementation"]): r["tokens_per_s"] for r in rows.read_csv(csv_path)}
    assert got == {("cpu-x", "seq"): "2", ("cpu-x", "ddpo"): "3.5", ("gpu-y", "ddpo"): "9"}
    assert list(rows.read_csv(csv_path)[0]) == rows.COLUMNS
    p = json.loads(prov.read_text())
    assert set(p) == {"cpu-x", "gpu-y"}
    assert p["cpu-x"]["utc"] == "t2" and p["cpu-x"]["stage_runs"] == {"train": "t2", "score": "t1"}
    # an entry written before stage_runs existed stands for every stage the new run did not redo
    legacy = rows.merge_provenance({"c": {"utc": "t0"}}, {"c": {"utc": "t1", "stage_runs": {"train": "t1"}}})
    assert legacy["c"]["stage_runs"]["train"] == "t1"
    assert {s: r["utc"] for s, r in legacy["c"]["stage_runs"].items() if s != "train"} == dict.fromkeys(
        set(rows.STAGES) - {"train"}, "t0")


def test_trl_layouts_keep_our_tokens():
    exs = _pairs()
    for e, r in zip(exs, trl_adapters.preference_rows(exs)):
        assert r["prompt_ids"] + r["chosen_ids"] == e["chosen"]["input_ids"]
        assert r["prompt_ids"] + r["rejected_ids"] == e["rejected"]["input_ids"]
        assert len(r["chosen_ids"]) == sum(e["chosen"]["response_mask"])
        assert (r["ref_chosen_logps"], r["ref_rejected_logps"]) == (e["ref_chosen"], e["ref_rejected"])
    b = trl_adapters.completion_batch(exs, pad_id=3)
    for i, e in enumerate(exs):
        real = b["attention_mask"][i].bool()
        assert b["input_ids"][i][real].tolist() == e["chosen"]["input_ids"]
        assert b["labels"][i][b["labels"][i] != -100].tolist() == trl_adapters.split_prompt(e["chosen"])[1]
    bad = [dict(exs[0], rejected={"input_ids": [1] + exs[0]["rejected"]["input_ids"],
                                  "response_mask": [0] + exs[0]["rejected"]["response_mask"]})]
    with pytest.raises(ValueError, match="prompts differ"):
        trl_adapters.preference_rows(bad)


def test_ddpo_loss_matches_trl_dpo_and_a_trl_step_learns(tok, tiny_model, tmp_path):
    exs = _pairs(vocab=len(tok))
    dev = torch.device("cpu")
    tr = train.make_trainer(tiny_model, tok, "ddpo", len(exs), dev, tmp_path)
    with torch.no_grad():
        ours = float(tr.loss_sum(exs)[0]) / len(exs)
    trl = trl_adapters.TrlDPO(tiny_model, tok, dev, tmp_path, train.BETA, lr=1e-3)
    theirs = trl.loss(exs)
    assert abs(ours - math.log(2)) > 1e-3  # margins are not 0
    assert ours == pytest.approx(theirs, abs=1e-5)
    first = trl.step(exs)  # its loss on the batch, before the update
    assert first == pytest.approx(theirs, abs=1e-5)
    trl.step(exs)
    assert trl.loss(exs) < theirs - 1e-3  # the step updated the weights the loss is computed from


def test_kd_full_matches_trl_and_topk_error_shrinks(tok, tmp_path):
    from dadpo.testing import tiny_llama

    teacher, student = tiny_llama(tok, seed=0), tiny_llama(tok, seed=1, layers=3)
    exs = _pairs(vocab=len(tok))
    V = len(tok)
    full, trl, res, n = kd_full_and_trl(student, teacher, exs, tok.pad_token_id, torch.device("cpu"), ks=(4, 64, V))
    assert n == sum(sum(e["chosen"]["response_mask"]) for e in exs)
    assert full > 0 and trl == pytest.approx(full, rel=1e-5)
    errs = {k: abs(v[0] - full) / full for k, v in res.items()}
    assert errs[V] < 5e-3 and errs[4] > errs[64]  # k = V: only the cache's fp16 rounding is left
    assert abs(res[V][2] - full) / full < 1e-5  # ... and with fp32 log-probs nothing
    assert {k: v[1] for k, v in res.items()} == {k: 6 * k + 4 for k in (4, 64, V)}
    # format 2 (64 tail samples): 6 more bytes a sample, and closer to the full loss than format 1 at k=4
    assert {k: v[4] for k, v in res.items()} == {k: 6 * k + 4 + 6 * 64 for k in (4, 64, V)}
    assert abs(res[4][3] - full) < abs(res[4][0] - full) and abs(res[V][3] - full) / full < 5e-3
    kd = trl_adapters.TrlKD(student, teacher, tok, torch.device("cpu"), tmp_path, lr=1e-3)
    before = kd.step(exs)
    assert before > 0 and kd.loss(exs) < before  # TRL's KD step runs and moves the student to the teacher


def test_train_stage_rows_for_every_implementation(tok, tmp_path, one_thread):
    from dadpo.testing import attach_scores, attach_topk, tiny_llama

    teacher, student = tiny_llama(tok, seed=0), tiny_llama(tok, seed=1, layers=2)
    exs = cases.synthetic_pairs(4, len(tok), 0, prompt=(3, 6), chosen=(4, 9), rejected=(2, 9), max_len=20)
    attach_scores(exs, student, tok.pad_token_id, "ref")
    attach_scores(exs, teacher, tok.pad_token_id, "te")
    attach_topk(exs, teacher, tok.pad_token_id, 8)
    sink = rows.Sink("tiny-test", torch.device("cpu"), "cpu", "", peak_tflops=1.0, bw_gbs=1.0)
    got = train.bench_train(sink, student, tok, exs, batch=2, warmup=1, rounds=2, workdir=tmp_path, teacher=teacher)
    assert set(got) == {"sft", "ddpo", "dadpo", "kd", "ddpo_padded", "dadpo_padded", "trl_dpo", "trl_kd"}, [
        r.get("notes") for r in sink.rows]
    for name in got:
        assert len(got[name]["round_s"]) == 2 and all(t > 0 for t in got[name]["round_s"])
        r = sink.find("train", name)
        assert r["tokens_per_s"] > 0 and r["peak_mem_mb"] > 0 and math.isfinite(r["loss"])
        assert "2 timed steps" in r["notes"]
    assert sink.find("train", "ddpo")["ratio_of"].startswith("tokens/s over trl_dpo")
    assert sink.find("train", "kd")["ratio"] > 0
    assert sink.find("train", "dadpo_over_ddpo")["ratio"] > 0
    assert "[packing=on, lm_head=chunked]" in sink.find("train", "ddpo")["notes"]
    assert "[packing=off (padded), lm_head=chunked]" in sink.find("train", "ddpo_padded")["notes"]
    assert sink.find("train", "ddpo_over_ddpo_padded")["ratio"] > 0
    ddpo_pairs = sum(len(e[a]["input_ids"]) for e in exs for a in ("chosen", "rejected")) / 2
    assert sink.find("train", "ddpo")["tokens_per_step"] == round(ddpo_pairs)


@pytest.mark.parametrize("argv, message", [
    (["--case", "tiny", "--stages", "train,bogus"], "unknown bogus"),
    (["--case", "tiny", "--pairs", "2", "--batch", "3"], "more than --pairs"),
    (["--case", "profile", "--sections", "AZ"], "--sections"),
])
def test_cli_rejects_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_cli_fills_case_defaults():
    args = parse_args(["--case", "cpu", "--stages", "train"])
    assert args.stages == ["train"] and (args.pairs, args.batch, args.steps) == (8, 1, 6)
