"""``python -m mt6d_mp.bench``: the same as ``mt6d-bench`` (cli.py)."""

import sys

from mt6d_mp.bench.cli import main

sys.exit(main())
