"""`python -m moshi_eval.librilight ...` (see `cli.py`)."""

import sys

from .cli import main

sys.exit(main())
