"""telelens.lens: the analysis objects both sides share, torch-only.

``ActivationCache``, ``FactoredMatrix``, TransformerLens's ``utils``, hook shape patterns,
the token methods, the generation loop and the norm function: what a local
``HookedTransformer`` and a ``RemoteModel`` compute the same way on the caller's side.
Imports torch, numpy and ``telelens.protos``; never the core, the client, gRPC, Ray or transformers.
"""
