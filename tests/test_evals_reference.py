"""Reference-similarity judge on a tiny BERT-like encoder built here."""
import pytest
import torch

from evals.judges import JudgeItem, VerdictCache
from evals.judges.reference import ReferenceJudge
from evals.protocol import Pair, compare, position_stats

CORPUS = ["Paris is the capital of France.", "The sea is blue and the sky is wide.",
          "Sleep well: keep a routine, avoid caffeine.", "Python functions return values."] * 4


def save_tiny_bert(folder, seed=0):
    """A random 2-layer BERT with a WordPiece tokenizer trained on a few sentences (offline)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials,
                                                              show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[(t, tok.token_to_id(t)) for t in ("[CLS]", "[SEP]")])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=128)
    torch.manual_seed(seed)
    model = BertModel(BertConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=128))
    fast.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def test_embeddings_are_unit_norm_and_padding_invariant(bert_dir):
    j = ReferenceJudge(str(bert_dir), device="cpu")
    alone, _ = j.embed(["Paris is blue."])
    batch, cut = j.embed(["Paris is blue.", "The sea is blue and the sky is wide, keep a routine and sleep well."])
    assert torch.allclose(batch.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(alone[0], batch[0], atol=1e-5)  # padding does not enter the mean
    assert cut == [False, False]
    _, cut = ReferenceJudge(str(bert_dir), max_seq_length=6).embed(["Paris is blue.", "The sea is blue and the sky"])
    assert cut == [False, True]


def test_prefers_the_answer_closer_to_the_reference(bert_dir, tmp_path):
    j = ReferenceJudge(str(bert_dir), tie_margin=0.0, cache=VerdictCache(tmp_path / "v.sqlite"))
    ref = "Paris is the capital of France."
    pairs = [Pair("1", "capital?", ref, "Python functions return values.", ref),  # student = reference
             Pair("2", "capital?", "Sleep well, keep a routine.", ref, ref),  # teacher = reference
             Pair("3", "capital?", "same text", "same text", ref),
             Pair("4", "capital?", "a", "b", None)]
    comps = compare(j, pairs)
    assert [c.outcome for c in comps] == ["win", "loss", "tie", "failed"]
    assert comps[3].failure == "student_first: no reference; teacher_first: no reference"
    v = comps[0].verdicts
    assert v["student_first"].details["sim_a"] == pytest.approx(1.0, abs=1e-5)
    assert v["student_first"].details["sim_a"] == v["teacher_first"].details["sim_b"]  # mirrored exactly
    assert position_stats(comps)["order_consistency"] == 1.0
    wide = ReferenceJudge(str(bert_dir), tie_margin=2.0)  # cosines differ by at most 2: always a tie
    assert {c.outcome for c in compare(wide, pairs[:3])} == {"tie"}
    assert wide.identity != j.identity


def test_no_reference_is_a_failure_not_a_verdict(bert_dir):
    v = ReferenceJudge(str(bert_dir)).judge([JudgeItem("q", "a", "b", None), JudgeItem("q", "a", "b", "  ")])
    assert all(x.failed and x.reason == "no reference" for x in v)


def test_a_random_init_folder_serves_shape_runs(bert_dir, tmp_path):
    """A shape run's embedder: config and tokenizer, a seed marker and no weights (nothing to carry).
    It embeds like the weighted encoder of the same seed-built weights: deterministic, unit norm."""
    import json
    import shutil

    from dadpo.modeling import MARKER

    folder = tmp_path / "random_bert"
    shutil.copytree(bert_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    (folder / MARKER).write_text(json.dumps({"seed": 3}))
    a, _ = ReferenceJudge(str(folder), device="cpu").embed(["Paris is blue.", "The sea is wide."])
    b, _ = ReferenceJudge(str(folder), device="cpu").embed(["Paris is blue.", "The sea is wide."])
    weighted, _ = ReferenceJudge(str(bert_dir), device="cpu").embed(["Paris is blue.", "The sea is wide."])
    assert torch.equal(a, b) and torch.allclose(a.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(a, weighted)  # built from the seed, not read from a file
