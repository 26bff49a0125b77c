"""bench.greedy_match: where two backends' answers part, counted on re-encoded tokens."""
from reproduce.bench.greedy_match import compare, first_difference, main


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 4]) == 2
    assert first_difference([1, 2], [1, 2, 3]) == 2  # a prefix parts where it ends
    assert first_difference([], [5]) == 0 and first_difference([7], [7]) == 1


def test_compare_counts_identical_answers_and_where_others_part(tok):
    eager = ["the cat sat on the mat", "hello world", "same"]
    static = ["the cat sat on a mat", "hello world", "same"]
    res = compare(tok, eager, static)
    assert res["answers"] == 3 and res["identical"] == 2 and res["identical_share"] == round(2 / 3, 4)
    (diff,) = res["differing"]
    a, b = (tok(x, add_special_tokens=False)["input_ids"] for x in ("the cat sat on the mat", "the cat sat on a mat"))
    assert diff["first_diff_token"] == first_difference(a, b) > 0
    assert 0 < diff["share_of_answer"] < 1


def test_bad_arguments_are_one_line_errors(capsys):
    assert main(["--n", "0"]) == 2
    assert capsys.readouterr().err.strip().startswith("error:")
