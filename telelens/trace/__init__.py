"""telelens.trace: build intervention graphs the way you would write TransformerLens code.

The shared, torch-only front end that a local ``HookedTransformer`` and a ``RemoteModel``
both use: the :class:`Tracer` context, the :class:`GraphBuilder`, value proxies, declarative
hook ops (:mod:`ops`), ``run_with_cache``/``run_with_hooks`` as graphs (:mod:`builders`) and
the patching-sweep helpers (:mod:`patching`). It runs graphs through the
:class:`GraphBackend` protocol only, so it never knows where a graph executes.
Imports torch and ``telelens.protos``; never the core, the client, gRPC, Ray or transformers.
"""
