"""What a server says about one of its models, as the client holds it: the config (hook points:
``telelens.client.remote_hooks``)."""

from __future__ import annotations

from typing import Any

import torch

from telelens.lens.surface import block_param_count


class RemoteConfig:
    """The server model's ``HookedTransformerConfig`` as attributes (from its JSON).

    ``dtype`` is a torch dtype, as in the core; ``device`` is "cpu", where results arrive
    (the server's device is ``server_device``).
    """

    def __init__(self, values: dict[str, Any]) -> None:
        values = dict(values)
        dtype = values.get("dtype", "float32")
        if isinstance(dtype, str):
            values["dtype"] = getattr(torch, dtype.removeprefix("torch."), dtype)
        values["server_device"] = values.get("device")
        values["device"] = "cpu"
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:  # only for names that are not set
        raise AttributeError(f"the server model's config has no field {name!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["dtype"] = str(d["dtype"]).removeprefix("torch.")
        return d

    @property
    def n_params(self) -> int:
        """Parameters in the blocks (embeddings excluded), counted as the core counts them."""
        return block_param_count(self)

    def __repr__(self) -> str:
        keys = ("model_name", "n_layers", "d_model", "n_heads", "d_head", "d_vocab", "dtype")
        return "RemoteConfig(" + ", ".join(f"{k}={getattr(self, k, None)!r}" for k in keys) + ", ...)"
