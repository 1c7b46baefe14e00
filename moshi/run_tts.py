"""Upstream's text-to-speech command (`moshi-tts`); not part of this fork."""

from __future__ import annotations

import sys

from .unsupported import refused_command, refused_names

UNSUPPORTED = "text-to-speech (moshi-tts) is not supported by this fork, which runs Moshi dialogue models only"

main = refused_command(UNSUPPORTED)
__getattr__ = refused_names(UNSUPPORTED)

if __name__ == "__main__":
    sys.exit(main())
