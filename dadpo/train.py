"""Train one method from one command (earlier stages are reused from the cache or run first).

    python -m dadpo.train --method dadpo --setting table1 --scale smoke [--set objective.beta2=0.2]
    python -m dadpo.train --method sft --config my.yaml

Prints progress per stage and the trained model folder, tokens/s and peak memory.
Under `accelerate launch --num_processes N python -m dadpo.train ...` the training stage runs data
parallel with the same global batch.
"""
from __future__ import annotations

import argparse
import json
import sys

from dadpo.cache import Cache, cache_root
from dadpo.config import ConfigError, load_config
from dadpo.methods import METHODS


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dadpo.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", required=True, help="sft | kd | ddpo | dadpo | dadpo_token (extension)")
    ap.add_argument("--setting", default="table1", choices=["table1", "table2"])
    ap.add_argument("--scale", default="smoke")
    ap.add_argument("--config", help="a YAML config (default: the packaged one for setting x scale)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--cache", help="cache folder (default: $DADPO_CACHE or ~/.cache/dadpo)")
    args = ap.parse_args(argv)
    known = list(METHODS)
    try:
        if args.method not in known:
            raise ConfigError(f"unknown method {args.method!r} (known: {', '.join(known)})")
        cfg = load_config(args.config, args.set, setting=args.setting, scale=args.scale)
        from dadpo.pipeline import Pipeline

        pipe = Pipeline(cfg, Cache(args.cache or cache_root()))
        path = pipe.trained(args.method)
    except (ConfigError, ValueError, RuntimeError, OSError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    res = pipe.facts.get("training", {}).get(args.method, {})
    print(json.dumps({"method": args.method, "model": path, **{k: res.get(k) for k in (
        "steps", "global_batch", "processes", "tokens_per_s", "peak_memory_mb", "final_loss")}},
        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
