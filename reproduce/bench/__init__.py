"""Performance benchmark of the suite's training, scoring and generation against TRL
(`python -m reproduce.bench`, see __main__.py).

Imports go one way: measure, flops, rows -> trl_adapters -> score, kd_topk, generation, train ->
cases -> profile -> __main__.
"""
