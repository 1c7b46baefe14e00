"""Talk to a Moshi model in the browser: `python -m moshi.server` (console script `moshi-server-py`).

The server speaks upstream Moshi's websocket protocol on `/api/chat` (see `moshi.server.protocol`), so upstream's web
client works against it, and serves a small page of its own at `/`. It needs the `server` extra (aiohttp, sphn).

    cli              flags, loading, `main`
    app              the aiohttp application: routes, one conversation at a time, the model thread
    conversation     one websocket conversation: receive, step, send, with bounded queues
    served_model     Mimi + LMGen + tokenizer, one 80 ms frame per step, a fresh state per conversation
    protocol         message kinds and close codes
    frame_queue      the bounded queue that drops its oldest frames
    demo_checkpoint  a small random-weight checkpoint to try it all without downloads
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """The command line (imported on call, so that `moshi.server.demo_checkpoint` works without aiohttp)."""
    try:
        from .cli import main as run
    except ImportError as error:
        import sys

        print(f"error: the server needs the `server` extra ({error}): pip install 'moshi[server]'", file=sys.stderr)
        return 2
    return run(argv)


__all__ = ["main"]
