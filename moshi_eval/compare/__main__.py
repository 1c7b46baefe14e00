"""`python -m moshi_eval.compare ...` (see `cli.py`)."""

import sys

from .cli import main

sys.exit(main())
