"""Evaluation tools built on the `moshi` package (see `moshi_eval.librilight`)."""
