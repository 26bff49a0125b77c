"""reproduce.bench bookkeeping and parity helpers on tiny models (no timing asserted)."""
import math

import pytest
import torch

from reproduce import bench


def _pairs(n=3, vocab=300, seed=0):
    exs = bench.synthetic_pairs(n, vocab, seed, prompt=(3, 6), chosen=(4, 9), rejected=(2, 9), max_len=20)
    g = torch.Generator().manual_seed(seed)
    for e in exs:  # arbitrary frozen log-probs, so DPO margins are not 0
        for k in ("ref_chosen", "ref_rejected", "te_chosen", "te_rejected"):
            e[k] = float(-20 * torch.rand((), generator=g))
            e[k + "_count"] = 1
    return exs


def test_flops_follow_the_documented_formula():
    m = bench.random_model("tiny-student", torch.device("cpu"), torch.float32)
    s = bench.shape_of(m)
    c = bench.QWEN_SHAPES["tiny-student"]
    assert (s.layers, s.d, s.d_att, s.vocab) == (2, 64, 64, 512)
    assert s.n_body == sum(p.numel() for p in m.model.layers.parameters())
    assert s.n_total == s.n_body + c["vocab_size"] * 64 + 64  # tied head, final norm
    lens, resp = [3, 5], 4
    want = 6 * (s.n_body * 8 + 512 * 64 * 4 + 2 * 64 * (9 + 25))
    assert bench.model_flops(s, lens, resp, train=True) == want
    assert bench.model_flops(s, lens, resp, train=False) == want // 3
    assert bench.decode_weight_bytes(s, torch.bfloat16) == 2 * (s.n_body + 512 * 64)


def test_rows_merge_by_key_and_round_trip(tmp_path):
    csv_path, prov = tmp_path / "perf.csv", tmp_path / "perf.provenance.json"
    old = [{"case": "cpu-x", "device": "cpu", "stage": "train", "implementation": "ddpo", "tokens_per_s": 1.0},
           {"case": "cpu-x", "device": "cpu", "stage": "train", "implementation": "sft", "tokens_per_s": 2.0}]
    bench.merge_into(csv_path, prov, old, {"cpu-x": {"a": 1}})
    new = [{"case": "cpu-x", "device": "cpu", "stage": "train", "implementation": "ddpo", "tokens_per_s": 3.5},
           {"case": "gpu-y", "device": "cuda", "stage": "train", "implementation": "ddpo", "tokens_per_s": 9.0}]
    bench.merge_into(csv_path, prov, new, {"gpu-y": {"b": 2}})
    rows = bench.read_csv(csv_path)
    got = {(r["case"], r["implementation"]): r["tokens_per_s"] for r in rows}
    assert got == {("cpu-x", "sft"): "2", ("cpu-x", "ddpo"): "3.5", ("gpu-y", "ddpo"): "9"}
    assert list(rows[0]) == bench.COLUMNS
    assert set(__import__("json").loads(prov.read_text())) == {"cpu-x", "gpu-y"}


def test_trl_layouts_keep_our_tokens():
    exs = _pairs()
    rows = bench.trl_preference_rows(exs)
    for e, r in zip(exs, rows):
        assert r["prompt_ids"] + r["chosen_ids"] == e["chosen"]["input_ids"]
        assert r["prompt_ids"] + r["rejected_ids"] == e["rejected"]["input_ids"]
        assert len(r["chosen_ids"]) == sum(e["chosen"]["response_mask"])
    b = bench.trl_distill_batch(exs, pad_id=3)
    for i, e in enumerate(exs):
        p, c = bench.split_prompt(e["chosen"])
        assert b["prompt_ids"][i][b["prompt_mask"][i].bool()].tolist() == p  # left-padded prompt
        assert b["prompt_mask"][i][-1] == 1
        assert b["completion_ids"][i][b["completion_mask"][i].bool()].tolist() == c  # right-padded answer
    bad = [dict(exs[0], rejected={"input_ids": [1] + exs[0]["rejected"]["input_ids"],
                                  "response_mask": [0] + exs[0]["rejected"]["response_mask"]})]
    with pytest.raises(ValueError, match="prompts differ"):
        bench.trl_preference_rows(bad)


def test_peak_memory_sees_a_cpu_allocation():
    with bench.PeakMemory(torch.device("cpu")) as pm:
        x = torch.ones(64 * 2 ** 20 // 4)
        x += 1
        import time
        time.sleep(0.02)
    assert pm.added_mb > 40
    assert bench.model_bytes(torch.nn.Linear(4, 4, bias=False)) == 64


def test_ddpo_loss_matches_trl_dpo(tok, tiny_model, tmp_path):
    pytest.importorskip("trl")
    exs = _pairs(vocab=len(tok))
    dev = torch.device("cpu")
    tr = bench.make_trainer(tiny_model, tok, "ddpo", len(exs), dev, tmp_path)
    with torch.no_grad():
        ours = float(tr.loss_sum(exs)[0]) / len(exs)
    trl_tr = bench.make_trl_dpo(tiny_model, tok, dev, tmp_path)
    theirs = bench.trl_dpo_loss(trl_tr, tiny_model, bench.trl_preference_rows(exs), dev)
    assert abs(ours - math.log(2)) > 1e-3  # margins are not 0
    assert ours == pytest.approx(theirs, abs=1e-5)
    # one TRL step runs and leaves the weights (lr 1e-9) where they were
    opt = torch.optim.AdamW(tiny_model.parameters(), lr=bench.LR)
    loss = bench.trl_dpo_step(trl_tr, tiny_model, bench.trl_preference_rows(exs), opt, dev)
    assert loss == pytest.approx(theirs, abs=1e-5)
    bench._TRL_DPO.clear()


def test_kd_full_matches_trl_and_topk_error_shrinks(tok):
    from dadpo.testing import tiny_llama

    pytest.importorskip("trl")
    teacher, student = tiny_llama(tok, seed=0), tiny_llama(tok, seed=1, layers=3)
    exs = _pairs(vocab=len(tok))
    V = len(tok)
    full, trl, res, n = bench.kd_full_and_trl(student, teacher, exs, tok.pad_token_id, torch.device("cpu"),
                                              ks=(4, 64, V))
    assert n == sum(sum(e["chosen"]["response_mask"]) for e in exs)
    assert full > 0 and trl == pytest.approx(full, rel=1e-5)
    errs = {k: abs(v[0] - full) / full for k, v in res.items()}
    assert errs[V] < 5e-3 and errs[4] > errs[64]  # k = V: only the cache's fp16 rounding is left
    assert abs(res[V][2] - full) / full < 1e-5  # ... and with fp32 log-probs nothing
    assert {k: v[1] for k, v in res.items()} == {k: 6 * k + 4 for k in (4, 64, V)}
    # the step function of TRL's KD path runs on the same examples
    opt = torch.optim.AdamW(student.parameters(), lr=bench.LR)
    assert bench.trl_kd_step(student, teacher, exs, tok.pad_token_id, opt, torch.device("cpu"), V) > 0
