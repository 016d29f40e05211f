"""Peak memory of loading SmolLM2-135M: from the GGUF (first load, converts and caches) and from the cache.

Each load runs in a fresh process with glibc told to give freed memory back
(``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``, else freed arenas hide the peak).
The baseline is the RSS after the libraries are imported; the peak is ``VmHWM`` after the
load (reset through ``/proc/self/clear_refs`` at the baseline). Reported against the
model's fp32 weight bytes; the target is a peak delta <= 1.3x those bytes.

    python bench/load_memory.py            # uses a fresh temporary TELELENS_CACHE
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def child() -> None:
    """One load in this process; prints a JSON line."""
    import gguf  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoConfig, AutoTokenizer  # noqa: F401

    from telelens.core.hooked_transformer import HookedTransformer
    from telelens.core.loading import load  # noqa: F401

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _status("VmRSS")
    t0 = time.perf_counter()
    model = HookedTransformer.from_pretrained_no_processing("smollm2-135m", device="cpu")
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    after = _status("VmRSS")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"base": base, "peak": peak, "after": after, "weights": weights, "seconds": seconds}))


def main() -> None:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    with tempfile.TemporaryDirectory() as cache:
        env["TELELENS_CACHE"] = cache
        print(f"{'load':<22}{'time s':>8}{'peak delta MB':>15}{'weights MB':>12}{'ratio':>8}{'kept MB':>9}")
        for label in ("GGUF (convert+cache)", "cache (fp32 safetensors)"):
            out = subprocess.run(
                [sys.executable, __file__, "--child"], env=env, capture_output=True, text=True, check=True
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            delta = r["peak"] - r["base"]
            print(
                f"{label:<22}{r['seconds']:>8.1f}{delta / 1e6:>15.0f}{r['weights'] / 1e6:>12.0f}"
                f"{delta / r['weights']:>8.2f}{(r['after'] - r['base']) / 1e6:>9.0f}"
            )


if __name__ == "__main__":
    if "--child" in sys.argv:
        child()
    else:
        main()
