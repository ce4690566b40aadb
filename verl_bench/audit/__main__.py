"""``python -m verl_bench.audit [--sets ...] [--out FILE] [--data-root DIR]``"""

import sys

from verl_bench.audit.cli import main

sys.exit(main())
