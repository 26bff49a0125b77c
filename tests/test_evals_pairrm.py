"""PairRM through llm-blender's own model class and input builder, on a tiny checkpoint of the same
architecture (DebertaV2PairRM: DeBERTa-v2 encoder + PairRM head) built here with random weights."""
import importlib.util
import json

import pytest
import torch

if importlib.util.find_spec("llm_blender") is None:
    pytest.skip("llm-blender is not installed (optional extra 'pairrm')", allow_module_level=True)

from evals.judges import JudgeError, JudgeItem  # noqa: E402
from evals.judges.pairrm import PairRMJudge, import_llm_blender  # noqa: E402
from evals.protocol import Pair, compare  # noqa: E402

CORPUS = ["Hello, how are you today? I am fine, thank you.", "Explain the theory of relativity in simple terms.",
          "Write a short poem about the sea and the sky.", "What is the capital of France? Paris is the capital."]


def save_tiny_pairrm(folder, seed=0):
    """DeBERTa-v2 Unigram tokenizer (trained with `tokenizers`, offline) with PairRM's prefix tokens, and
    a 2-layer DebertaV2PairRM whose config carries the prefix ids, as llm-blender/PairRM-hf does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import DebertaV2Config, DebertaV2Tokenizer

    DebertaV2PairRM, _, _ = import_llm_blender()
    uni = Tokenizer(models.Unigram())
    uni.pre_tokenizer = pre_tokenizers.Metaspace()
    uni.train_from_iterator(CORPUS * 5, trainer=trainers.UnigramTrainer(
        vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], unk_token="[UNK]",
        show_progress=False))
    vocab = [tuple(x) for x in json.loads(uni.to_str())["model"]["vocab"]]
    tok = DebertaV2Tokenizer(vocab=vocab)
    tok.add_tokens(["<|source|>", "<|candidate1|>", "<|candidate2|>", "<|candidate|>"])
    ids = tok.convert_tokens_to_ids
    cfg = DebertaV2Config(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=512, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=64,
        position_biased_input=False, initializer_range=1.0,  # large: random scores that depend on the text
        n_tasks=1, drop_out=0.05, sep_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id,
        source_prefix_id=ids("<|source|>"), cand_prefix_id=ids("<|candidate|>"),
        cand1_prefix_id=ids("<|candidate1|>"), cand2_prefix_id=ids("<|candidate2|>"),
        architectures=["DebertaV2PairRM"])
    torch.manual_seed(seed)
    DebertaV2PairRM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pairrm_dir(tmp_path_factory):
    return save_tiny_pairrm(tmp_path_factory.mktemp("tiny_pairrm"))


ITEMS = [JudgeItem("What is the capital of France?", "Paris is the capital.", "I am fine, thank you."),
         JudgeItem("Write a short poem", "The sea and the sky, simple terms", "Hello"),
         JudgeItem("hello", "how are you", "thank you")]


def test_import_works_on_transformers_5():
    import transformers.utils.hub as hub

    DebertaV2PairRM, tokenize_pair, version = import_llm_blender()
    assert hasattr(hub, "TRANSFORMERS_CACHE") and version == "0.0.2"
    assert DebertaV2PairRM.__module__ == "llm_blender.pair_ranker.pairrm"
    assert tokenize_pair.__module__ == "llm_blender.blender.blender_utils"


def test_scores_match_the_pairrm_head_and_do_not_depend_on_batching(pairrm_dir):
    j = PairRMJudge(str(pairrm_dir), source_max_length=64, candidate_max_length=32, batch_size=3, device="cpu")
    v = j.judge(ITEMS)
    logits = [x.details["logit"] for x in v]
    assert len(set(round(x, 6) for x in logits)) == 3  # the text matters
    assert [x.outcome for x in v] == ["A" if lg > 0 else "B" for lg in logits]
    # recompute item 0 by hand: encoder states at the <|source|>, <|candidate1|>, <|candidate2|> tokens
    # through the head, left score minus right score (what PairRM's paper defines)
    it = ITEMS[0]
    ids = (j.tokenizer.encode("<|source|>" + it.prompt) + j.tokenizer.encode("<|candidate1|>" + it.answer_a)
           + j.tokenizer.encode("<|candidate2|>" + it.answer_b))
    x = torch.tensor([ids])
    with torch.no_grad():
        h = j.model.pretrained_model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state[0]
        cfg = j.model.config
        pos = [ids.index(t) for t in (cfg.source_prefix_id, cfg.cand1_prefix_id, cfg.cand2_prefix_id)]
        left = j.model.head_layer(torch.cat([h[pos[0]], h[pos[1]]]))
        right = j.model.head_layer(torch.cat([h[pos[0]], h[pos[2]]]))
    assert logits[0] == pytest.approx((left - right).item(), abs=1e-4)
    j.batch_size = 1
    alone = [x.details["logit"] for x in j.judge(ITEMS)]
    assert alone == pytest.approx(logits, abs=1e-4)


def test_truncation_is_recorded(pairrm_dir):
    j = PairRMJudge(str(pairrm_dir), source_max_length=12, candidate_max_length=10)
    long = "Explain the theory of relativity in simple terms, write a poem about the sea and the sky."
    v = j.judge([JudgeItem("hello", long, "thank you"), JudgeItem(long, "Paris", "how are you")])
    t0, t1 = v[0].details["truncation"], v[1].details["truncation"]
    assert t0["source_cut"] is False and t0["a_cut"] is True and t0["b_cut"] is False
    n_src = len(j.tokenizer.encode("<|source|>hello"))
    assert t0["source_tokens"] == n_src and t0["candidate_max"] == (12 + 20 - n_src) // 2  # tokenize_pair's budget
    assert t1["source_cut"] is True and t1["candidate_max"] == 10 and not (t1["a_cut"] or t1["b_cut"])
    assert j.identity["source_max_length"] == 12 and j.identity["candidate_max_length"] == 10


def test_both_orders_through_the_protocol(pairrm_dir):
    j = PairRMJudge(str(pairrm_dir), source_max_length=64, candidate_max_length=32)
    comps = compare(j, [Pair(str(i), it.prompt, it.answer_a, it.answer_b) for i, it in enumerate(ITEMS)])
    for c in comps:
        a, b = c.verdicts["student_first"], c.verdicts["teacher_first"]
        assert a.details["logit"] != pytest.approx(-b.details["logit"], abs=1e-6)  # two real passes
        assert c.outcome in ("win", "tie", "loss") and (c.outcome == "tie") == (not c.consistent)


def test_unreachable_checkpoint_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(JudgeError) as e:
        PairRMJudge(str(tmp_path / "no-such-folder"))
    assert "\n" not in str(e.value) and "cannot load" in str(e.value)
