"""`python -m moshi_eval.paper_metrics ...` (see `cli.py`)."""

import sys

from .cli import main

sys.exit(main())
