"""Why a request failed, as a gRPC status name and a readable message (no grpc import here).

A refused graph is either *invalid* (INVALID_ARGUMENT, with the structured ``GraphError``s)
or merely *too big* for the caller's limits (RESOURCE_EXHAUSTED). Which one is decided by
checking the graph again under limits that cannot be exceeded (``ir.Limits.unbounded``): if it
passes then, only the limits stood in the way. Reasons are never parsed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from telelens.protos import codec, ir

# gRPC refuses a status whose message + trailing metadata pass 16 KiB (the call then fails as
# RESOURCE_EXHAUSTED or UNAVAILABLE, its details lost), and every echoed hook or model name is the
# caller's to make long. So each echoed text is clipped and the errors capped: the message
# stays under MAX_MESSAGE_CHARS and the graph-errors trailer under about 3.5 KiB.
MAX_TEXT_CHARS = 160
"""The most characters of one echoed name or reason (the rest becomes an ellipsis)."""
MAX_ERRORS = 10
"""The most graph errors sent in the trailer; an extra entry says how many more there were."""
MAX_MESSAGE_CHARS = 2500
"""The most characters of a status message."""
_SLACK = 40  # room for clip's "... (N more characters)"


def clip(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """``text``, or its first ``limit`` characters and an ellipsis noting how many were cut.

    Idempotent (a worker's clipped errors pass the front door unchanged): text at most
    ``_SLACK`` characters over the limit, as clipped text is, is kept whole.
    """
    if len(text) <= limit + _SLACK:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def bounded_errors(errors: Iterable[ir.GraphError]) -> tuple[ir.GraphError, ...]:
    """At most ``MAX_ERRORS`` of ``errors``, each field and reason clipped, plus one entry saying
    how many more were left out (if any): what a status's details can carry. Idempotent."""
    errors = tuple(errors)
    shown = errors if len(errors) <= MAX_ERRORS + 1 else errors[:MAX_ERRORS]  # never "1 more"
    kept = tuple(ir.GraphError(e.node_id, clip(e.field, 80), clip(e.reason)) for e in shown)
    if len(errors) > len(shown):
        kept += (ir.GraphError(None, "", f"... and {len(errors) - MAX_ERRORS} more error(s)"),)
    return kept


class Failure(Exception):
    """A request that cannot complete: ``code`` is a ``grpc.StatusCode`` name."""

    def __init__(self, code: str, message: str, errors: Iterable[ir.GraphError] = ()) -> None:
        errors = tuple(errors)
        super().__init__(code, message, errors)
        self.code = code
        self.message = message
        self.errors = errors

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def trailing_metadata(failure: Failure) -> tuple[tuple[str, bytes], ...]:
    """What travels beside ``failure``'s status: a refused graph's serialized ``GraphErrors``."""
    if not failure.errors:
        return ()
    errors = codec.errors_to_proto(bounded_errors(failure.errors)).SerializeToString()
    return ((codec.GRAPH_ERRORS_KEY, errors),)


def status_message(failure: Failure) -> str:
    """``failure``'s message as sent in a status: clipped to ``MAX_MESSAGE_CHARS``."""
    return clip(failure.message, MAX_MESSAGE_CHARS)


def refused(
    error: ir.GraphValidationError, recheck: Callable[[ir.Limits], list[ir.GraphError]], limits: ir.Limits
) -> Failure:
    """The failure for a graph refused under ``limits``; ``recheck(l)`` lists its errors under ``l``."""
    remaining = recheck(limits.unbounded())
    if not remaining:
        return Failure(
            "RESOURCE_EXHAUSTED", _summary("the graph exceeds this key's limits", error.errors), error.errors
        )
    errors = list(error.errors) + [e for e in remaining if e not in error.errors]
    return Failure("INVALID_ARGUMENT", _summary("invalid intervention graph", errors), tuple(errors))


def decode(data: object, limits: ir.Limits) -> ir.Graph:
    """``codec.decode_graph`` whose refusal is a :class:`Failure` (invalid, or over the limits)."""
    try:
        return codec.decode_graph(data, limits)  # type: ignore[arg-type]
    except ir.GraphValidationError as e:
        raise refused(e, lambda lim: _decode_errors(data, lim), limits) from None


def _decode_errors(data: object, limits: ir.Limits) -> list[ir.GraphError]:
    try:
        codec.decode_graph(data, limits)  # type: ignore[arg-type]
    except ir.GraphValidationError as e:
        return e.errors
    return []


def has_code(graph: ir.Graph) -> bool:
    """Whether any node (sweep metrics included) is a code hook."""
    return any(
        isinstance(n, ir.CodeHook)
        or (isinstance(n, ir.Sweep) and any(isinstance(m, ir.CodeHook) for m in n.metric))
        for n in graph.nodes
    )


def _summary(headline: str, errors: list[ir.GraphError] | tuple[ir.GraphError, ...]) -> str:
    shown = [clip(str(e)) for e in errors[:MAX_ERRORS]]
    more = f"\n  ... and {len(errors) - MAX_ERRORS} more" if len(errors) > MAX_ERRORS else ""
    return f"{headline} ({len(errors)} error(s)):\n  " + "\n  ".join(shown) + more
