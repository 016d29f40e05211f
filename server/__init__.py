"""The telelens server: gRPC front door, API keys, Ray workers (``telelens serve``).

    from telelens.server import ServeConfig, run_server
    with run_server(ServeConfig.for_model("smollm2-135m", port=0)) as server:
        print(server.address)

Modules: ``config`` (typed, validated settings), ``auth`` (API keys), ``worker`` (one model
replica; the Ray actor body), ``pool`` (replicas, routing, dead-worker replacement),
``service`` (the gRPC servicer), ``failures`` (errors -> status codes), ``app`` (start/stop).
Importing this package is cheap; torch and Ray load when a server starts.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ConfigError", "ModelConfig", "ServeConfig", "ServerHandle", "load_config", "run_server"]

_WHERE = {
    "ConfigError": "telelens.server.config",
    "ModelConfig": "telelens.server.config",
    "ServeConfig": "telelens.server.config",
    "load_config": "telelens.server.config",
    "ServerHandle": "telelens.server.app",
    "run_server": "telelens.server.app",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'telelens.server' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_WHERE[name]), name)
