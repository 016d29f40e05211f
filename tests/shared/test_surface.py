"""One model surface: ``HookedTransformer`` and ``RemoteModel`` answer the same public names.

Every public name of one that the other lacks must be declared below, with its reason. The
remote model here runs in-process (its transport executes graphs on a local model), so the
surface and the shared views are checked without a server; ``test_remote.py`` does the same
numbers over gRPC.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from tiny_models import GPT2, LLAMA_GQA, tiny_model
from torch import nn

from telelens.client.remote import RemoteModel
from telelens.core.graph.local import LocalBackend
from telelens.core.graph.weights import _all_names, weight_error, weight_shape
from telelens.protos import ir, service_pb2

TORCH_MODULE_API = "torch module API"

SWITCHES = "hook switches reconfigure the in-process modules; a server's are set when it serves"
IN_PROCESS_CACHING = (
    "caching hooks fill a dict in this process as the model runs; remotely, run_with_cache names what travels"
)
CACHING_HOOKS = ("get_caching_hooks", "cache_all", "cache_some", "add_caching_hooks", "is_caching")
"""``HookedRootModule``'s caching hooks. The rest of its hook management (``add_hook``,
``add_perma_hook``, ``reset_hooks``, ``hooks``, ``remove_all_hook_fns``, ``clear_contexts``,
``hook_points``, ``context_level``, ``list_hooks``, ``check_and_add_hook``, ``check_hooks_to_add``) is common to both classes."""

HOOK_SWITCHES = (
    "disabled_hook_reason", "set_use_attn_result", "set_use_attn_in", "set_use_hook_mlp_in",
    "set_use_split_qkv_input",
)  # fmt: skip

LOCAL_ONLY: dict[str, str] = {
    **dict.fromkeys(CACHING_HOOKS, IN_PROCESS_CACHING),
    "setup": "names the in-process hook point modules (a remote model's come from the server)",
    **dict.fromkeys(HOOK_SWITCHES, SWITCHES),
    "from_pretrained": "loads weights into this process (remotely: telelens.connect)",
    "from_pretrained_no_processing": "loads weights into this process (remotely: telelens.connect)",
    "init_weights": "writes the in-process parameters",
    "process_weights_": "edits the in-process parameters (a server processes its weights when it serves)",
    "set_tokenizer": "a remote model tokenizes with the server's tokenizer",
    "move_model_modules_to_device": "places the in-process modules on devices",
    "input_to_embed": "runs the embedding in this process",
    # the module tree (remotely: the weight views W_E, W_U, W_pos, blocks[l], ln_final)
    "mod_dict": "module tree by name",
    "embed": "module tree: its weight is W_E",
    "pos_embed": "module tree: its weight is W_pos",
    "unembed": "module tree: its weights are W_U and b_U",
    "hook_embed": "a hook point module (remotely: hook_dict['hook_embed'])",
    "hook_pos_embed": "a hook point module (remotely: hook_dict['hook_pos_embed'])",
}
"""Names only the local ``HookedTransformer`` has; ``nn.Module``'s own are declared as a group."""

REMOTE_ONLY: dict[str, str] = {
    "close": "closes the connection",
    "transport": "the connection (bytes received, the last run's figures)",
    "info": "the server's ModelInfo message",
    "server_version": "the server's version from the handshake",
    "weight_shapes": "the weights the server lists, with shapes and dtypes, before any is fetched",
    "model_name": "the name the server serves the model under",
    "allow_code": "whether this connection sends Python hook functions (telelens.connect(allow_code=...))",
}
"""Names only the ``RemoteModel`` has."""


def _public(names: Any) -> set[str]:
    return {n for n in names if not n.startswith("_")}


class _InProcessTransport:
    """A transport whose runs execute on a local model: a RemoteModel without a server."""

    target = "in-process"

    def __init__(self, model: Any) -> None:
        self.backend = LocalBackend(model)

    def run(self, model_name: str, graph: ir.Graph, **kwargs: Any) -> dict[str, torch.Tensor]:
        return self.backend.execute(graph, allow_code=False)

    def close(self) -> None:
        pass


def _in_process_remote(local: Any) -> RemoteModel:
    info = service_pb2.ModelInfo(name="tiny", config_json=json.dumps(local.cfg.to_dict(), default=str))
    for name in LocalBackend(local).hook_names:
        info.hooks.add(name=name, shape=local.hook_shapes()[name])
    for name in _all_names(local.cfg.n_layers):
        if weight_error(local, name) is None:
            info.weights.add(name=name, shape=weight_shape(local, name)[0])
    return RemoteModel(_InProcessTransport(local), info)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def local() -> Any:
    return tiny_model(GPT2, norm_noise=0.1)


@pytest.fixture(scope="module")
def remote(local: Any) -> RemoteModel:
    return _in_process_remote(local)


def test_local_and_remote_answer_the_same_names(local: Any, remote: RemoteModel) -> None:
    local_names = _public(dir(local))
    remote_names = _public(dir(remote))
    torch_api = _public(dir(nn.Module)) | {"training"}
    declared_local = {**dict.fromkeys(torch_api, TORCH_MODULE_API), **LOCAL_ONLY}
    undeclared_local = local_names - remote_names - set(declared_local)
    undeclared_remote = remote_names - local_names - set(REMOTE_ONLY)
    assert not undeclared_local, f"local-only names without a declared reason: {sorted(undeclared_local)}"
    assert not undeclared_remote, f"remote-only names without a declared reason: {sorted(undeclared_remote)}"
    # The table stays honest: every declared name is one side's and not the other's.
    assert set(LOCAL_ONLY) <= local_names - remote_names, sorted(
        set(LOCAL_ONLY) - (local_names - remote_names)
    )
    assert set(REMOTE_ONLY) <= remote_names - local_names, sorted(
        set(REMOTE_ONLY) - (remote_names - local_names)
    )
    assert torch_api & remote_names == {"forward"}  # of nn.Module's API only forward exists remotely


def test_class_surfaces_match(local: Any, remote: RemoteModel) -> None:
    """The same check on the classes alone (properties and methods, no instance attributes)."""
    local_cls, remote_cls = _public(dir(type(local))), _public(dir(RemoteModel))
    torch_api = _public(dir(nn.Module))
    assert not local_cls - remote_cls - torch_api - set(LOCAL_ONLY) - {"hook_names"}  # hook_names: an
    # attribute remotely, a property locally
    assert (
        not remote_cls - local_cls - set(REMOTE_ONLY) - {"hook_dict", "context_level"}
    )  # hook_dict, context_level: module attributes locally


@pytest.mark.parametrize("preset", [GPT2, LLAMA_GQA], ids=["gpt2", "llama"])
def test_shared_surface_gives_the_local_numbers(preset: dict[str, Any]) -> None:
    local = tiny_model(preset, norm_noise=0.1)
    remote = _in_process_remote(local)
    for name in ("W_U", "b_U", "W_E", "W_Q", "W_K", "W_V", "W_O", "b_O", "W_in", "W_out", "b_out"):
        assert torch.equal(getattr(remote, name), getattr(local, name).detach()), name
    assert (remote.W_gate is None) == (local.W_gate is None)
    assert hasattr(remote, "W_pos") == hasattr(local, "W_pos")
    for layer in range(local.cfg.n_layers + 1):
        assert torch.equal(remote.accumulated_bias(layer), local.accumulated_bias(layer))
    assert torch.equal(
        remote.tokens_to_residual_directions([[3, 4]]), local.tokens_to_residual_directions([[3, 4]])
    )
    assert remote.all_head_labels() == local.all_head_labels()
    assert remote.hook_shapes() == {n: s for n, s in local.hook_shapes().items() if n in remote.hook_dict}
    x = torch.randn(2, 5, local.cfg.d_model)
    with torch.no_grad():
        for layer in range(local.cfg.n_layers):
            assert torch.equal(remote.blocks[layer].ln1(x), local.blocks[layer].ln1(x))
            assert torch.equal(remote.blocks[layer].ln2(x), local.blocks[layer].ln2(x))
            assert torch.equal(remote.blocks[layer].attn.W_O, local.blocks[layer].attn.W_O.detach())
        assert remote.ln_final is not None and local.ln_final is not None
        assert torch.equal(remote.ln_final(x), local.ln_final(x))
        assert torch.equal(remote.apply_ln_final(x), local.apply_ln_final(x))
        logits = local(torch.tensor([[1, 2, 3, 4]]))
        tokens = torch.tensor([[1, 2, 3, 4]])
        mask = torch.tensor([[0, 1, 1, 1]])
        assert torch.equal(remote.loss_fn(logits, tokens, mask), local.loss_fn(logits, tokens, mask))
    with pytest.raises(AttributeError, match="no 'hook_z'"):
        remote.blocks[0].attn.hook_z  # noqa: B018


def test_local_weight_views_are_the_parameters() -> None:
    """Weight processing and tests edit W_E/W_U in place: the local views are the stored tensors."""
    local = tiny_model(GPT2)
    assert local.W_E is local.embed.W_E
    assert local.W_U.data_ptr() == local.unembed.weight.data_ptr()
    assert local.get_weight("blocks.1.attn.W_O").data_ptr() == local.blocks[1].attn.W_O.data_ptr()
    assert local.get_weight("blocks.1.ln1.w") is local.blocks[1].ln1.w
    assert not local.has_weight("blocks.9.ln1.w") and not local.has_weight("W_gate")
