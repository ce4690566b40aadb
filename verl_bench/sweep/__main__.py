"""python -m verl_bench.sweep SPACE.yaml [...]: the same flags as `verl-bench sweep`."""

import argparse
import sys

from verl_bench.config import ConfigError
from verl_bench.sweep.run import add_sweep_parser

ap = argparse.ArgumentParser(prog="verl-bench")
add_sweep_parser(ap.add_subparsers(dest="cmd", required=True))
a = ap.parse_args(["sweep", *sys.argv[1:]])
try:
    sys.exit(a.fn(a))
except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
