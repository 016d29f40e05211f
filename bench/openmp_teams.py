"""Why a worker runs every torch operation on one thread: the cost of a second OpenMP team.

Times the same small SmolLM2 graph (one prompt, stop after layer 6) on the main thread and on
a long-lived helper thread, in the order given. Once two threads of a process have started
OpenMP work, libgomp counts more threads than cores and stops spinning between parallel
regions, and every forward pass slows down on both threads.

    .venv/bin/python bench/openmp_teams.py main,pool,main     # main first, then both slow
    .venv/bin/python bench/openmp_teams.py pool,pool          # one team only: fast throughout
"""

from __future__ import annotations

import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = "The Eiffel Tower is in the city of"


def main() -> None:
    import torch

    from telelens.core.graph import execute
    from telelens.core.graph.hooks import hook_table
    from telelens.core.hooked_transformer import HookedTransformer
    from telelens.core.loading.resolve import bundled_gguf
    from telelens.protos import ir
    from telelens.trace import builders

    order = (sys.argv[1] if len(sys.argv) > 1 else "main,pool,main").split(",")
    torch.set_num_threads(2)
    pool = ThreadPoolExecutor(1)
    path = str(bundled_gguf("HuggingFaceTB/SmolLM2-135M-Instruct"))

    def setup() -> tuple[HookedTransformer, ir.Graph]:
        model = HookedTransformer.from_pretrained_no_processing(path, device="cpu").eval()
        tokens = model.to_tokens(PROMPT)
        graph, _ = builders.build_run_with_cache_graph(
            tokens, "blocks.6.hook_resid_post", list(hook_table(model).order), return_type=None
        )
        return model, graph

    # Set up on the thread that runs first, so that loading starts no extra team.
    model, graph = setup() if order[0] == "main" else pool.submit(setup).result()

    def once() -> float:
        start = time.perf_counter()
        execute(model, graph, ir.Limits(), for_autograd=False)
        return time.perf_counter() - start

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for where in order:
        times = []
        for _ in range(20):
            time.sleep(0.05)
            times.append(once() if where == "main" else pool.submit(once).result())
        print(f"{where:5s} min {min(times) * 1e3:.1f} ms, median {statistics.median(times) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
