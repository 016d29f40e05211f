"""Loading: name resolution, clear errors, tied embeddings, dtypes, first_n_layers, tokenizers, cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from telelens.core.hooked_transformer import HookedTransformer
from telelens.core.loading import (
    CheckpointMismatchError,
    SafetensorsWriter,
    UnknownModelError,
    parse_dtype,
    resolve_model,
)
from telelens.core.loading import cache as gguf_cache
from telelens.core.loading.checkpoint import SafetensorsCheckpoint
from telelens.core.loading.resolve import bundled_gguf, official_name
from telelens.core.models.registry import supported_architectures


def load(folder, **kwargs):
    return HookedTransformer.from_pretrained_no_processing(str(folder), device="cpu", **kwargs)


# ------------------------------------------------------------------------------------ resolution
def test_aliases():
    assert official_name("gpt2-small") == "gpt2"
    assert official_name("GPT2-Small") == "gpt2"
    assert official_name("pythia-70m") == "EleutherAI/pythia-70m"
    assert official_name("pythia-160m-deduped") == "EleutherAI/pythia-160m-deduped"
    assert official_name("qwen2.5-0.5b-instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert official_name("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert official_name("no-such-alias") is None


def test_smollm2_names_resolve_offline_to_the_bundled_gguf(smollm2_path):
    assert bundled_gguf("HuggingFaceTB/SmolLM2-135M-Instruct") == smollm2_path
    for name in ("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        resolved = resolve_model(name)
        assert (resolved.kind, resolved.path) == ("gguf", smollm2_path)
        assert resolved.short_name == "SmolLM2-135M-Instruct"


def test_local_paths(tiny_hf, tmp_path):
    _, folder = tiny_hf("llama_gqa")
    resolved = resolve_model(folder)
    assert (resolved.kind, resolved.path, resolved.short_name) == ("folder", folder, folder.name)
    gguf_dir = tmp_path / "g"
    gguf_dir.mkdir()
    (gguf_dir / "m.gguf").write_bytes(b"GGUF")
    assert resolve_model(gguf_dir).kind == "gguf" and resolve_model(gguf_dir / "m.gguf").short_name == "m"


def test_unknown_name_lists_everything_tried(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(UnknownModelError) as err:
        HookedTransformer.from_pretrained_no_processing("telelens-tests/no-such-model-xyz")
    msg = str(err.value)
    for step in ("local path", "TransformerLens alias", "Hugging Face cache", "Hugging Face hub"):
        assert step in msg, msg
    assert "no-such-model-xyz" in msg


def test_offline_skips_the_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnknownModelError, match=r"hub: not tried \(offline"):
        resolve_model("gpt2-small")


def test_hf_cache_resolution(tiny_hf, tmp_path):
    """A model in the Hugging Face cache layout is found by its hub name (and by alias)."""
    hf, _ = tiny_hf("gpt2")
    snapshot = tmp_path / "hub" / "models--gpt2" / "snapshots" / "0123abcd"
    hf.save_pretrained(snapshot)
    (tmp_path / "hub" / "models--gpt2" / "refs").mkdir()
    (tmp_path / "hub" / "models--gpt2" / "refs" / "main").write_text("0123abcd")
    model = HookedTransformer.from_pretrained_no_processing(
        "gpt2-small", cache_dir=str(tmp_path / "hub"), local_files_only=True, device="cpu"
    )
    assert model.cfg.model_name == "gpt2" and model.cfg.tokenizer_name == "gpt2"
    toks = torch.randint(0, hf.config.vocab_size, (1, 9))
    with torch.no_grad():
        assert (model(toks) - hf(toks).logits).abs().max() <= 1e-4


def test_folder_without_config_or_weights(tmp_path, tiny_hf):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(UnknownModelError, match=r"no config\.json.*notes\.txt"):
        load(tmp_path / "empty")
    _hf, folder = tiny_hf("llama_gqa")
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no weights.*config\.json"):
        load(folder)


# ------------------------------------------------------------------------------------ errors
def test_unknown_architecture(tmp_path):
    from transformers import OPTConfig

    config = OPTConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2)
    config.architectures = ["OPTForCausalLM"]
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unsupported architecture OPTForCausalLM") as err:
        load(tmp_path)
    for arch in ("GPT2LMHeadModel", "LlamaForCausalLM", "GPTNeoXForCausalLM", "Qwen2ForCausalLM"):
        assert arch in str(err.value)
        assert arch in supported_architectures()


def _rewrite(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_tensor_is_named(tiny_hf):
    _, folder = tiny_hf("llama_gqa")
    _rewrite(folder, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(
        CheckpointMismatchError, match=r"not filled.*blocks\.1\.mlp\.in_weight \(rows 80:160\)"
    ):
        load(folder)


def test_extra_tensor_is_named(tiny_hf):
    _, folder = tiny_hf("gpt2")
    _rewrite(folder, lambda t: t.update({"transformer.h.0.attn.rogue.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointMismatchError, match=r"not used: transformer\.h\.0\.attn\.rogue\.weight"):
        load(folder)


def test_misshaped_tensor_is_named(tiny_hf):
    _, folder = tiny_hf("neox_parallel")
    _rewrite(folder, lambda t: t.update({"gpt_neox.layers.0.mlp.dense_4h_to_h.bias": torch.zeros(5)}))
    with pytest.raises(
        CheckpointMismatchError, match=r"dense_4h_to_h\.bias \(5,\) -> blocks\.0\.mlp\.out_bias .*shape"
    ):
        load(folder)


def test_bias_the_model_does_not_have(tiny_hf):
    """A LLaMA config without attention_bias but a checkpoint with a q bias: named, not dropped."""
    _, folder = tiny_hf("llama_gqa")
    _rewrite(folder, lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": torch.zeros(48)}))
    with pytest.raises(
        CheckpointMismatchError, match=r"q_proj\.bias -> blocks\.0\.attn\.qkv_bias: the model has no"
    ):
        load(folder)


# ------------------------------------------------------------------------------------ structure
def test_tied_embeddings_stay_tied(tiny_hf):
    hf, folder = tiny_hf("llama_tied")
    model = load(folder)
    assert model.cfg.tie_word_embeddings
    assert model.unembed.weight is model.embed.W_E
    assert model.unembed.weight.data_ptr() == model.embed.W_E.data_ptr()
    names = [n for n, _ in model.named_parameters()]
    assert "embed.W_E" in names and "unembed.weight" not in names  # one tensor, one name
    toks = torch.randint(0, hf.config.vocab_size, (2, 10))
    with torch.no_grad():
        assert (model(toks) - hf(toks).logits).abs().max() <= 1e-4


_RSS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from telelens.core.hooked_transformer import HookedTransformer

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    import gc

    # One-time costs (imports, torch's meta-device kernels) outside the measurement: load once first.
    HookedTransformer.from_pretrained_no_processing(sys.argv[1], device="cpu")
    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")
    base = status("VmRSS")
    model = HookedTransformer.from_pretrained_no_processing(sys.argv[1], device="cpu")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"peak": status("VmHWM") - base, "kept": status("VmRSS") - base, "weights": weights}))
    """
)


def test_tied_model_memory_is_one_copy(tiny_hf):
    """In a separate process: peak RSS while loading a tied, embedding-dominated model (26 MB) is one copy."""
    hf, folder = tiny_hf("llama_tied", config_overrides={"vocab_size": 50_000, "hidden_size": 128})
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(folder)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["weights"] == sum(p.numel() * 4 for p in hf.parameters())  # W_E counted once
    assert r["peak"] < 1.2 * r["weights"], r  # a second copy of W_E would make it ~2x


def test_dtype_bfloat16(tiny_hf):
    hf, folder = tiny_hf("qwen2")
    model = load(folder, dtype="bfloat16")
    assert model.cfg.dtype == torch.bfloat16
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    toks = torch.randint(0, hf.config.vocab_size, (2, 10))
    with torch.no_grad():
        ours = model(toks).float()
        ref = hf(toks).logits
    assert (ours - ref).abs().max() <= 0.05 * ref.abs().max()
    assert load(folder, dtype=torch.float16).cfg.dtype == torch.float16


def test_parse_dtype():
    assert parse_dtype("fp16") is torch.float16 and parse_dtype("torch.bfloat16") is torch.bfloat16
    assert parse_dtype("float32") is torch.float32 and parse_dtype(torch.float64) is torch.float64
    with pytest.raises(ValueError, match="unknown dtype"):
        parse_dtype("int3")


def test_first_n_layers(tiny_hf):
    hf, folder = tiny_hf("neox_sequential", config_overrides={"num_hidden_layers": 3})
    model = load(folder, first_n_layers=2)
    assert model.cfg.n_layers == 2 and len(model.blocks) == 2
    toks = torch.randint(0, hf.config.vocab_size, (2, 10))
    with torch.no_grad():
        hidden = hf(toks, output_hidden_states=True).hidden_states  # embeddings, then one per layer
        _, cache = model.run_with_cache(toks, names_filter="blocks.1.hook_resid_post")
    assert (cache["blocks.1.hook_resid_post"] - hidden[2]).abs().max() <= 1e-4
    with pytest.raises(ValueError, match="first_n_layers=4"):
        load(folder, first_n_layers=4)


def test_device_map_and_move_to_device(tiny_hf):
    _, folder = tiny_hf("gpt2")
    model = load(folder, device_map=["cpu", "cpu"])
    assert model.cfg.device_map == ["cpu", "cpu"]
    model = HookedTransformer.from_pretrained_no_processing(str(folder), move_to_device=False)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    with pytest.raises(ValueError, match="n_devices > 1 needs an accelerator"):
        load(folder, n_devices=2)


def test_weight_processing_flags(tiny_hf):
    calls = []

    class Recording(HookedTransformer):
        def process_weights_(self, **flags):
            calls.append(flags)

    _, tied = tiny_hf("llama_tied")
    _, untied = tiny_hf("gpt2", config_overrides={"tie_word_embeddings": False})
    Recording.from_pretrained(str(tied), device="cpu")
    Recording.from_pretrained(str(untied), device="cpu")
    Recording.from_pretrained_no_processing(str(untied), device="cpu")
    assert len(calls) == 2  # nothing to do: not called
    assert calls[0] == {
        "fold_ln": True,
        "center_writing_weights": True,
        "center_unembed": True,  # tied, but fold_ln gives W_U its own tensor (as TransformerLens)
        "fold_value_biases": True,
        "refactor_factored_attn_matrices": False,
    }
    assert calls[1]["center_unembed"] is True


def test_from_pretrained_processes_weights(tiny_hf):
    """Default processing keeps log-probs (fold LN, center weights) for an untied model."""
    hf, folder = tiny_hf("gpt2", config_overrides={"tie_word_embeddings": False})
    model = HookedTransformer.from_pretrained(str(folder), device="cpu")
    toks = torch.randint(0, hf.config.vocab_size, (2, 10))
    with torch.no_grad():
        ours = model(toks).log_softmax(-1)
        ref = hf(toks).logits.log_softmax(-1)
    assert (ours - ref).abs().max() <= 1e-4


# ------------------------------------------------------------------------------------ tokenizers
def _save_word_tokenizer(folder: Path, adds_bos: bool) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<bos>": 0, "<eos>": 1, "a": 2, "b": 3, "c": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if adds_bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>").save_pretrained(
        folder
    )


@pytest.mark.parametrize("adds_bos", [False, True])
def test_tokenizer_and_bos_detection(tiny_hf, adds_bos):
    _, folder = tiny_hf("llama_gqa")
    _save_word_tokenizer(folder, adds_bos)
    model = load(folder)
    assert model.tokenizer is not None
    assert model.cfg.tokenizer_prepends_bos is adds_bos
    assert model.cfg.default_prepend_bos is True
    assert model.tokenizer.encode("a b c", add_special_tokens=False) == [2, 3, 4]
    if not adds_bos:
        assert model.to_tokens("a b c")[0].tolist() == [0, 2, 3, 4]
        assert load(folder, default_prepend_bos=False).to_tokens("a b")[0].tolist() == [2, 3]


def test_folder_without_tokenizer_loads(tiny_hf):
    _, folder = tiny_hf("mistral")
    assert load(folder).tokenizer is None


# ------------------------------------------------------------------------------------ files
def test_safetensors_writer_roundtrip(tmp_path):
    tensors = {
        "a": torch.randn(3, 4),
        "b": torch.randn(5).to(torch.bfloat16),
        "c": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "d": torch.zeros(0, 2),
        "e": torch.randn(7, 3).T,  # not contiguous
    }
    writer = SafetensorsWriter(tmp_path / "x.safetensors")
    for name, t in tensors.items():
        writer.add(name, t)
    writer.finish()
    assert not (tmp_path / "x.safetensors.data").exists()
    with safe_open(tmp_path / "x.safetensors", "pt") as f:  # the reference reader
        assert set(f.keys()) == set(tensors)
        for name, t in tensors.items():
            assert torch.equal(f.get_tensor(name), t)
    with SafetensorsCheckpoint([tmp_path / "x.safetensors"]) as ckpt:  # ours
        got = {ref.name: ref.load() for ref in ckpt}
    assert all(torch.equal(got[n], t) for n, t in tensors.items())


def test_gguf_cache_key_follows_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TELELENS_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF1")
    first = gguf_cache.gguf_cache_dir(f)
    assert first.is_relative_to(tmp_path / "cache") and gguf_cache.cached_folder(f) is None
    os.utime(f, ns=(1, 1))
    assert gguf_cache.gguf_cache_dir(f) != first  # modified file: new key
