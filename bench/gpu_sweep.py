"""GPU patching-sweep benchmark: a Llama-3-8B-shaped random-weight model in bf16, one short run.

    python bench/gpu_sweep.py                      # on the device machine (CUDA), ~2-4 minutes
    python bench/gpu_sweep.py --tiny               # CPU smoke test of this script, a few seconds

Measures, on the same model, prompts and metric (``get_act_patch_resid_pre``, 32 layers x
``--positions`` positions, a TransformerLens-style callable metric):
  telelens engine    the batched engine (default of telelens.core.patching)
  telelens naive     one forward pass per cell (method="naive")
  TL 3.9             transformer_lens.patching.get_act_patch_resid_pre, only if transformer_lens
                     is importable there (the same weights, converted); else reported as absent
Weights are drawn on the GPU (no 16 GB CPU detour). Results are printed and, when ``$OUT``
is set, written to ``$OUT/gpu_sweep.json``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import gc
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from telelens.core import patching
from telelens.core.config import HookedTransformerConfig
from telelens.core.hooked_transformer import HookedTransformer

LLAMA3_8B = dict(
    n_layers=32, d_model=4096, n_heads=32, n_key_value_heads=8, d_head=128, d_mlp=14336, d_vocab=128256,
    rotary_base=500000.0,
)  # fmt: skip
TINY = dict(
    n_layers=4, d_model=64, n_heads=4, n_key_value_heads=2, d_head=16, d_mlp=128, d_vocab=1000,
    rotary_base=10000.0,
)  # fmt: skip


def config(shape: dict[str, Any], dtype: torch.dtype, device: str, n_ctx: int) -> HookedTransformerConfig:
    return HookedTransformerConfig(
        **shape, n_ctx=n_ctx, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
        rotary_dim=shape["d_head"], gated_mlp=True, eps=1e-5, dtype=dtype, device=device, seed=0,
        original_architecture="LlamaForCausalLM", initializer_range=0.02,
    )  # fmt: skip


def build(cfg: HookedTransformerConfig) -> HookedTransformer:
    """Random weights drawn where they live (on the GPU for the big model)."""
    assert cfg.device is not None  # config() always names one
    with torch.device(cfg.device):
        model = HookedTransformer(cfg, init_weights=False)
    gen = torch.Generator(device=cfg.device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0) if name.endswith(".w") else p.zero_()
            else:
                p.normal_(0.0, cfg.initializer_range, generator=gen)
    return model.eval()


def tl_model(ours: HookedTransformer) -> Any:
    """TransformerLens 3.9's HookedTransformer with the same weights (None when it is not installed)."""
    if importlib.util.find_spec("transformer_lens") is None:
        return None
    from transformer_lens import HookedTransformer as TLModel
    from transformer_lens import HookedTransformerConfig as TLConfig

    c = ours.cfg
    cfg = TLConfig(
        n_layers=c.n_layers, d_model=c.d_model, d_head=c.d_head, n_heads=c.n_heads,
        n_key_value_heads=c.n_key_value_heads, d_mlp=c.d_mlp, d_vocab=c.d_vocab, n_ctx=c.n_ctx, act_fn="silu",
        normalization_type="RMS", positional_embedding_type="rotary", rotary_base=int(c.rotary_base),
        rotary_dim=c.rotary_dim, gated_mlp=True, final_rms=True, eps=c.eps, dtype=c.dtype, device=c.device,
        original_architecture="LlamaForCausalLM",
    )  # fmt: skip
    with torch.device(c.device):
        tl = TLModel(cfg, move_to_device=False)
    assert ours.ln_final is not None  # an RMSNorm model
    # Any: read through the blocks' norms (Norm or Identity to a type checker) and optional W_gate
    sd: dict[str, Any] = {
        "embed.W_E": ours.embed.W_E,
        "unembed.W_U": ours.unembed.W_U,
        "ln_final.w": ours.ln_final.w,
    }
    for i, b in enumerate(ours.blocks):
        p = f"blocks.{i}."
        sd.update({
            p + "ln1.w": b.ln1.w, p + "ln2.w": b.ln2.w,
            p + "attn.W_Q": b.attn.W_Q, p + "attn._W_K": b.attn._W_K, p + "attn._W_V": b.attn._W_V,
            p + "attn.W_O": b.attn.W_O,
            p + "mlp.W_in": b.mlp.W_in, p + "mlp.W_gate": b.mlp.W_gate, p + "mlp.W_out": b.mlp.W_out,
        })  # fmt: skip
    own = tl.state_dict()
    with torch.no_grad():
        for k, v in sd.items():
            own[k].copy_(v)
        for k, v in own.items():  # biases stay zero, as in the telelens model
            if k not in sd and (
                k.endswith((".b_Q", ".b_K", ".b_V", ".b_O", ".b_in", ".b_out", "b_U", "._b_K", "._b_V"))
            ):
                v.zero_()
    return tl.eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> float:
    gc.collect()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU (smoke test)")
    parser.add_argument("--positions", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3, help="engine repetitions (the loops run once)")
    parser.add_argument("--no-tl", action="store_true", help="skip TransformerLens even if installed")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = parser.parse_args()
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --tiny for the CPU smoke test")
    dtype = getattr(torch, args.dtype)
    cfg = config(TINY if args.tiny else LLAMA3_8B, dtype, device, n_ctx=max(64, args.positions))
    info: dict[str, Any] = {
        "model": "tiny llama (smoke test)" if args.tiny else "Llama-3-8B shape, random weights",
        "dtype": str(dtype), "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__, "layers": cfg.n_layers, "positions": args.positions,
    }  # fmt: skip
    print(json.dumps(info))

    t0 = time.perf_counter()
    model = build(cfg)
    sync(device)
    info["build_s"] = round(time.perf_counter() - t0, 2)
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, cfg.d_vocab, (1, args.positions), generator=gen).to(device)
    corrupted = clean.clone()
    corrupted[0, 3:6] = torch.randint(0, cfg.d_vocab, (3,), generator=gen).to(device)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, -1, 11] - logits[:, -1, 22]).float().mean()

    with torch.inference_mode():
        _, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_resid_pre"))
        grids: dict[str, torch.Tensor] = {}
        engine = lambda: grids.__setitem__(  # noqa: E731
            "engine", patching.get_act_patch_resid_pre(model, corrupted, cache, metric, progress=False)
        )
        naive = lambda: grids.__setitem__(  # noqa: E731
            "naive",
            patching.get_act_patch_resid_pre(model, corrupted, cache, metric, method="naive", progress=False),
        )
        timed(engine, device)  # warm-up (kernels, allocator)
        timed(lambda: model(corrupted), device)
        engine_s = [timed(engine, device) for _ in range(args.reps)]
        naive_s = timed(naive, device)
        results: dict[str, Any] = {
            "engine_s_min": min(engine_s), "engine_s_median": statistics.median(engine_s), "naive_s": naive_s,
            "naive_over_engine": naive_s / min(engine_s),
            "max_abs_diff_engine_vs_naive": (grids["engine"] - grids["naive"]).abs().max().item(),
            "grid_range": [grids["naive"].min().item(), grids["naive"].max().item()],
        }  # fmt: skip
        if device == "cuda":
            results["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)

        tl = None if args.no_tl else tl_model(model)
        if tl is None:
            results["tl"] = "transformer_lens not installed on this machine" if not args.no_tl else "skipped"
        else:
            import transformer_lens.patching as tl_patching

            _, tl_cache = tl.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_resid_pre"))
            run_tl = lambda: grids.__setitem__(  # noqa: E731
                "tl", tl_patching.get_act_patch_resid_pre(tl, corrupted, tl_cache, metric)
            )
            timed(lambda: tl(corrupted), device)
            tl_s = timed(run_tl, device)
            results.update(
                tl_s=tl_s, tl_over_engine=tl_s / min(engine_s),
                max_abs_diff_tl_vs_naive=(grids["tl"].to(grids["naive"].device) - grids["naive"]).abs().max().item(),
            )  # fmt: skip
    info.update(results)
    print(json.dumps(info, indent=1))
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "gpu_sweep.json"), "w") as f:
            json.dump(info, f, indent=1)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
