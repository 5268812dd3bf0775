"""``python -m mt6d_mp.lab``: the same as ``mt6d-lab`` (cli.py)."""

import sys

from mt6d_mp.lab.cli import main

sys.exit(main())
