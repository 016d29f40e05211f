"""The server's internals: no contract here, names may change between releases.

The public contract is :mod:`telelens.server` (``run_server``, ``ServeConfig`` and the config
types), its ``config`` and ``app`` modules, and the ``telelens serve`` / ``telelens keys`` CLI.

Modules by job: ``service`` (the gRPC servicer), ``auth`` (API keys), ``failures`` (errors ->
status codes), ``messages`` (RunResponse bytes), ``pool`` (replicas, routing, retries) and
``collect`` (results fetched through Ray), ``worker`` (one model replica's runs), ``results``
(what a run yields), ``loading`` (the model a replica loads), ``ray_worker`` (the Ray actor),
``worker_channel`` (the worker's gRPC end), ``config_parsing`` (YAML -> typed config).
"""
