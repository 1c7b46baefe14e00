"""Fixtures of the reliability tests. The server's cases use the server tests' demo checkpoint (random weights)."""

from __future__ import annotations

from server.conftest import demo_checkpoint  # noqa: F401  (a fixture, found here by pytest)
