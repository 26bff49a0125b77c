"""The only numbers recovered from the paper (docs/method.md#paper-numbers), in one place.

Each entry: (setting, method, suite, metric) -> value, with the paper's models. Our default
models are smaller stand-ins, so these are shown beside our rows, labelled with the paper's
setting, never as our results.
"""
PAPER_MODELS = {
    "table1": "20%-pruned Vicuna-1.5-7B student, Vicuna-1.5-7B teacher",
    "table2": "Qwen2.5-1.5B student, Qwen2.5-7B teacher",
}

# metric names match the columns of our CSV: pref_rate = (wins - losses) / n, win_rate = wins / n
PAPER_NUMBERS = {
    ("table1", "dadpo", "in_domain", "pref_rate"): -0.073,
    ("table1", "ddpo", "in_domain", "pref_rate"): -0.31,
    ("table2", "dadpo", "in_domain", "win_rate"): 0.14,
}

# Listed by an aggregator for daDPO in an unnamed setting (attribution UNCERTAIN): not placed in tables.
AGGREGATOR_NUMBERS = {"mt_bench_score": 6.1, "alpaca_eval_win_rate": 81.49, "alpaca_eval2_lc": 16.41,
                      "arena_hard": 22.4}


def paper_value(setting: str, method: str, suite: str) -> tuple[str, float | None]:
    """(metric, value) the paper reports for this row, or ("", None)."""
    for (s, m, su, metric), v in PAPER_NUMBERS.items():
        if (s, m, su) == (setting, method, suite):
            return metric, v
    return "", None
