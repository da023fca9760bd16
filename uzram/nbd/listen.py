"""Accepting connections without letting resource exhaustion end a listener."""

from __future__ import annotations

import errno
import logging
import time

import trio

# Out of descriptors or memory: the pending connection stays queued; wait, retry.
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# The peer gave up (or a signal): nothing is wrong with the listener.
_TRANSIENT = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EINTR, errno.EPERM})

BACKOFF_FIRST = 0.01
BACKOFF_MAX = 1.0
WARN_EVERY = 10.0


async def accept_retrying(listen_sock: trio.socket.SocketType, log: logging.Logger) -> trio.socket.SocketType:
    """``accept()``, retried with backoff while descriptors or memory run out
    (logged at most every few seconds); other errors are raised."""
    delay = BACKOFF_FIRST
    warned = 0.0
    while True:
        try:
            sock, _ = await listen_sock.accept()
            return sock
        except OSError as e:
            if e.errno in _TRANSIENT:
                continue
            if e.errno not in _EXHAUSTED:
                raise
            now = time.monotonic()
            if now - warned >= WARN_EVERY:
                log.warning("accept: %s; retrying (raise the descriptor limit or lower the connection limit)",
                            e.strerror)
                warned = now
            await trio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
