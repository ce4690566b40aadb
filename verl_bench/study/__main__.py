"""python -m verl_bench.study STUDY.yaml [...]: the same flags as `verl-bench study` (used by the kill test)."""

import sys

from verl_bench.cli import main

sys.exit(main(["study", *sys.argv[1:]]))
