"""Why a request failed, as a gRPC status name and a readable message (no grpc import here).

A refused graph is either *invalid* (INVALID_ARGUMENT, with the structured ``GraphError``s)
or merely *too big* for the caller's limits (RESOURCE_EXHAUSTED). Which one is decided by
checking the graph again under limits that cannot be exceeded (``ir.Limits.unbounded``): if it
passes then, only the limits stood in the way. Reasons are never parsed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from telelens.protos import codec, ir


class Failure(Exception):
    """A request that cannot complete: ``code`` is a ``grpc.StatusCode`` name."""

    def __init__(self, code: str, message: str, errors: Iterable[ir.GraphError] = ()) -> None:
        super().__init__(code, message, tuple(errors))
        self.code = code
        self.message = message
        self.errors = tuple(errors)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def trailing_metadata(failure: Failure) -> tuple[tuple[str, bytes], ...]:
    """What travels beside ``failure``'s status: a refused graph's serialized ``GraphErrors``."""
    if not failure.errors:
        return ()
    return ((codec.GRAPH_ERRORS_KEY, codec.errors_to_proto(failure.errors).SerializeToString()),)


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
    shown = [str(e) for e in errors[:10]]
    more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
    return f"{headline} ({len(errors)} error(s)):\n  " + "\n  ".join(shown) + more
