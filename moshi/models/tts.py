"""Upstream's text-to-speech model (`TTSModel` and its helpers); not part of this fork."""

from __future__ import annotations

from ..unsupported import refused_names

__getattr__ = refused_names("text-to-speech models are not supported by this fork, which runs Moshi dialogue models "
                            "only")
