"""The packing benchmark's CPU dry run: three layouts of one micro-batch, the same log-probs."""
import re

from dadpo.testing import save_tiny_model
from reproduce.bench import packing


def test_layouts_run_and_agree(tmp_path, capsys, one_thread):
    folder = save_tiny_model(tmp_path / "m")
    assert packing.main(["--model", str(folder), "--rows", "6", "--max-len", "24", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    lines = {m.group(1): m for m in re.finditer(r"^  (padded|one sequence|bins)\s+[\d.]+ ms\s+(\d+)x(\d+) positions"
                                                r".*sum log-prob (\S+)$", out, re.M)}
    assert set(lines) == {"padded", "one sequence", "bins"}
    assert len({m.group(4) for m in lines.values()}) == 1  # the same summed log-prob in every layout
    assert lines["one sequence"].group(2) == "1" and int(lines["bins"].group(2)) <= 6
    assert packing.main(["--rows", "0"]) == 2
