"""Upstream's terminal client for the Moshi server (`moshi-client-py`); not part of this fork."""

from __future__ import annotations

import sys

from .unsupported import refused_command, refused_names

UNSUPPORTED = ("the terminal client (moshi-client-py) is not part of this fork; use upstream's client from its own "
               "environment")

main = refused_command(UNSUPPORTED)
__getattr__ = refused_names(UNSUPPORTED)

if __name__ == "__main__":
    sys.exit(main())
