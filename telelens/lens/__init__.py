"""telelens.lens: the analysis objects both sides share, torch-only.

``ActivationCache``, ``FactoredMatrix``, TransformerLens's ``utils``, hook shape patterns,
the token methods, the generation loop, the norm function, and the one model surface
(``surface.ModelSurface``, with ``surface.CacheModel`` the protocol the cache reads, and
``views`` for ``blocks[l].attn.W_O``/``ln1``/``ln_final`` over ``get_weight``): what a local
``HookedTransformer`` and a ``RemoteModel`` compute the same way on the caller's side.
Imports torch, numpy and ``telelens.protos``; never the core, the client, gRPC, Ray or transformers.
"""
