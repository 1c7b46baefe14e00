"""`python -m moshi_eval.paper_metrics ...`: the paper-metrics command (`cli.py`), with LibriLight when a settings
file's `paper_metrics:` section names its data (`moshi_eval.training_metrics`). This program entry is the one module of
the package that may use the packages above it."""

import sys

from ..training_metrics import main

sys.exit(main())
