"""The client's defaults against a misbehaving server: a run's deadline and a result-size ceiling.

Kept free of gRPC so that :func:`telelens.connect`'s signature can name them without importing
the transport.
"""

from __future__ import annotations

import enum

RUN_TIMEOUT = 600.0
"""Deadline (s) of a ``Run`` (its whole result stream included) when ``connect`` is given no ``timeout``."""

DEFAULT_MAX_RESULT_BYTES = 16 << 30
"""What one ``Run`` may make this process allocate for its results (16 GiB) unless
``connect(max_result_bytes=...)`` says otherwise: four times a server's default
``max_result_bytes``, so only a server declaring absurd sizes is refused before allocating."""


class _Default(enum.Enum):
    DEFAULT = "default"


DEFAULT = _Default.DEFAULT
"""``connect(timeout=DEFAULT)``: ``RUN_TIMEOUT`` for runs and ``INFO_TIMEOUT`` for the small calls.
An explicit ``timeout=None`` is different: runs get no deadline at all."""

Timeout = float | None | _Default
"""A connection's ``timeout``: seconds, None (runs without deadline) or :data:`DEFAULT`."""
