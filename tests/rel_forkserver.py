"""A pre-warmed launcher for `python -m reproduce.table1`, so kill-and-resume trials cost seconds.

Importing torch, transformers, datasets and accelerate takes 3-7 s on two busy cores; a kill trial
should spend its time in the pipeline, not in imports. This process imports them once, then for each
request (one JSON line on stdin: {"argv": [...], "env": {...}, "log": PATH}) forks a child that runs
the real entry point, `reproduce.table1` as __main__, with that argv and environment and its stdout
and stderr (line-buffered) in PATH. It prints {"pid": PID} at once, and {"pid": PID, "status": CODE}
when the child ends (CODE < 0: killed by signal -CODE). The test SIGKILLs the child by its pid.
One child at a time; the children use one intra-op thread, as the tests' subprocesses do.
"""
import json
import os
import runpy
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import accelerate  # noqa: E402,F401
import datasets  # noqa: E402,F401
import torch  # noqa: E402
import transformers  # noqa: E402,F401
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer  # noqa: E402,F401

import dadpo.pipeline  # noqa: E402,F401
import dadpo.trainer  # noqa: E402,F401
import evals.judges.reference  # noqa: E402,F401
import reproduce.run  # noqa: E402,F401

torch.set_num_threads(1)


def child(req: dict) -> None:
    fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    os.environ.update(req.get("env", {}))
    os.chdir(req.get("cwd", os.getcwd()))
    sys.argv = ["reproduce.table1", *req["argv"]]
    code = 0
    try:
        runpy.run_module("reproduce.table1", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - a traceback in the log, exit 1
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            child(req)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"pid": pid, "status": code}), flush=True)


if __name__ == "__main__":
    main()
