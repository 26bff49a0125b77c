"""Result rows: one per (case, device, stage, implementation), merged into results/perf.csv with
the run's provenance beside it (results/perf.provenance.json)."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dadpo.cache import atomic_write_text
from reproduce.tables import fmt, write_csv

COLUMNS = ["case", "device", "stage", "implementation", "device_name", "model", "params_m", "dtype", "batch",
           "seq_len_max", "tokens_per_step", "step_ms", "tokens_per_s", "peak_mem_mb", "tflops", "mfu",
           "bw_share", "ratio", "ratio_of", "loss", "parity_abs_diff", "k", "bytes_per_token", "kd_rel_err",
           "versions", "notes"]
KEY = ("case", "device", "stage", "implementation", "model", "batch")
STAGES = ("score", "kd_topk", "parity", "train", "generate")


def versions_str(v: dict) -> str:
    return ";".join(f"{k}={v[k]}" for k in ("torch", "transformers", "accelerate", "trl") if v.get(k))


@dataclass
class Sink:
    """Where a run's rows go: each row gets the case, device and versions, and is written at once to
    `partial_csv` (if set), so a run cut short still leaves what it measured."""
    case: str
    dev: torch.device
    device_name: str
    versions: str
    peak_tflops: float  # the dense matmul rate MFU is measured against (switched per dtype)
    bw_gbs: float
    partial_csv: Path | None = None
    rows: list = field(default_factory=list)

    def add(self, **r) -> dict:
        row = {"case": self.case, "device": self.dev.type, "device_name": self.device_name,
               "versions": self.versions, **r}
        self.rows.append(row)
        if self.partial_csv is not None:
            self.partial_csv.parent.mkdir(parents=True, exist_ok=True)
            write_csv(self.partial_csv, self.rows, COLUMNS)
        return row

    def find(self, stage: str, implementation: str) -> dict | None:
        return next((r for r in self.rows if r["stage"] == stage and r["implementation"] == implementation), None)


def read_csv(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def merge_rows(old: list[dict], new: list[dict]) -> list[dict]:
    """Old rows whose key (case, device, stage, implementation, model, batch) reappears are replaced in place by the
    new ones; new keys are appended."""
    key = lambda r: tuple(str(r.get(k, "")) for k in KEY)  # noqa: E731
    fresh = {key(r): r for r in new}
    out = [fresh.pop(key(r), r) for r in old]
    return out + [r for r in new if key(r) in fresh]


def merge_provenance(old: dict, new: dict) -> dict:
    """Per case: the newest run's facts, and under "stage_runs" which run wrote each stage's rows
    (a run of some stages keeps the record of the run that wrote the others; an entry from before
    stage_runs existed stands for every stage)."""
    out = dict(old)
    for case, facts in new.items():
        prev = old.get(case, {})
        earlier = prev.get("stage_runs") or ({s: {k: prev.get(k) for k in ("utc", "git_sha", "loadavg", "versions")}
                                              for s in STAGES} if prev else {})
        runs = {**earlier, **facts.get("stage_runs", {})}
        out[case] = {**prev, **facts, **({"stage_runs": runs} if runs else {})}
    return out


def merge_into(csv_path: Path, prov_path: Path, rows: list[dict], prov: dict) -> None:
    csv_path, prov_path = Path(csv_path), Path(prov_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(csv_path, merge_rows(read_csv(csv_path), rows), COLUMNS)
    old = json.loads(prov_path.read_text()) if prov_path.is_file() else {}
    atomic_write_text(prov_path, json.dumps(merge_provenance(old, prov), indent=2, sort_keys=True, default=str) + "\n")


def print_table(rows: list[dict]) -> None:
    cols = ["stage", "implementation", "model", "batch", "step_ms", "tokens_per_s", "peak_mem_mb", "mfu", "bw_share",
            "ratio", "loss", "parity_abs_diff", "k", "bytes_per_token", "kd_rel_err"]
    print("\t".join(cols))
    for r in rows:
        print("\t".join(f"{r[c]:.4g}" if isinstance(r.get(c), float) else fmt(r.get(c)) for c in cols))
