"""The telelens server: gRPC front door, API keys, Ray workers (``telelens serve``).

    from telelens.server import ServeConfig, run_server
    with run_server(ServeConfig.for_model("smollm2-135m", port=0)) as server:
        print(server.address)

The public contract is this package's names, its ``config`` (the typed settings) and ``app``
(starting and stopping) modules, and the ``telelens serve`` / ``telelens keys`` commands
(``cli``). The internals live in ``telelens.server._private``, one module per job.
Importing this package is cheap; torch and Ray load when a server starts.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigError",
    "LimitsConfig",
    "ModelConfig",
    "ServeConfig",
    "ServerHandle",
    "TLSConfig",
    "load_config",
    "run_server",
]

_WHERE = {
    "ConfigError": "telelens.server.config",
    "ModelConfig": "telelens.server.config",
    "ServeConfig": "telelens.server.config",
    "LimitsConfig": "telelens.server.config",
    "TLSConfig": "telelens.server.config",
    "load_config": "telelens.server.config",
    "ServerHandle": "telelens.server.app",
    "run_server": "telelens.server.app",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'telelens.server' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_WHERE[name]), name)
