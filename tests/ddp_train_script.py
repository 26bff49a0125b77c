"""Run by tests/test_multiprocess.py, once as a plain process and once under `accelerate launch`."""
import json
import os
import sys

from dadpo.config import ObjectiveConfig, TrainConfig
from dadpo.examples import encode_rows
from dadpo.methods import build_method
from dadpo.testing import attach_scores, tiny_llama, tiny_tokenizer
from dadpo.trainer import Trainer

out, method, per_device = sys.argv[1], sys.argv[2], int(sys.argv[3])
cpu = sys.argv[4:] != ["deepspeed"]  # under DeepSpeed the launcher's config picks the device
if not cpu:  # DeepSpeed on CPU (DS_ACCELERATOR=cpu): accelerate knows only GPU backends for it
    from accelerate import PartialState

    PartialState(backend="gloo")
tok = tiny_tokenizer()
rows = [{"id": f"r{i}", "prompt": f"Question {i}: what is {i} plus {i}?", "chosen": f"The answer is {2 * i}.",
         "rejected": f"{i}"} for i in range(16)]
ex = encode_rows(tok, rows, 64, 32)
attach_scores(ex, tiny_llama(tok, seed=5), tok.pad_token_id, "ref")
attach_scores(ex, tiny_llama(tok, seed=7), tok.pad_token_id, "te")
cfg = TrainConfig(per_device_batch=per_device, global_batch=8, lr=1e-3, sft_lr=1e-3, epochs=2, sft_epochs=2,
                  warmup_ratio=0.0)
res = Trainer(tiny_llama(tok, seed=11), tok, build_method(method, ObjectiveConfig()), cfg, out, seed=0,
              cpu=cpu).train(ex)
if os.environ.get("RANK", "0") == "0":  # one line, not one per process racing on the same stdout
    print(json.dumps({"processes": res.processes, "accumulation": res.accumulation}))
