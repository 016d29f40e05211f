"""The activation-patching demo: where does "Eiffel Tower -> Paris" live in SmolLM2?

Patches the clean residual stream (``resid_pre``) into the corrupted run at every
(layer, position) cell and reports how much of the clean-vs-corrupt logit difference each
cell restores (1 = all of it, 0 = none). By default it starts a server on loopback (local
Ray, one SmolLM2 worker), connects to it as a thin client, and sends the whole experiment
as one sweep node: only the grid comes back.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

CLEAN = "The Eiffel Tower is in the city of"
CORRUPT = "The Colosseum is in the city of"
ANSWERS = (" Paris", " Rome")


def run_patching(model: Any) -> tuple[torch.Tensor, list[str]]:
    """The normalized patching grid [n_layers, pos] and the position labels.

    ``model`` is a local HookedTransformer or a remote model (``telelens.connect``): either
    way the sweep is one graph node, executed next to the weights; only the grid comes back.
    """
    from telelens.client import ops, patching

    clean, corrupt = model.to_tokens(CLEAN), model.to_tokens(CORRUPT)
    if clean.shape != corrupt.shape:
        raise ValueError(f"prompts tokenize to different lengths: {clean.shape[1]} vs {corrupt.shape[1]}")
    right, wrong = (model.to_single_token(a) for a in ANSWERS)
    backend = model if hasattr(model, "execute") else _local_backend(model)
    grid = patching.sweep(
        backend, corrupt, clean, activation="resid_pre", metric=ops.logit_diff(right, wrong), normalize=True
    )
    labels = [f"{i}:{t}" for i, t in enumerate(model.to_str_tokens(CORRUPT))]
    return grid, labels


def _local_backend(model: Any) -> Any:
    from telelens.core.graph.local import LocalBackend

    return LocalBackend(model)


def print_heatmap(grid: torch.Tensor, labels: list[str], title: str) -> None:
    """A layer x position heatmap in the terminal (rich)."""
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # Columns are numbered positions (tokens listed below) so the grid fits an 80-column terminal.
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0), collapse_padding=True)
    table.add_column("layer", justify="right")
    for i in range(len(labels)):
        table.add_column(f"p{i}", justify="center", min_width=6)
    for layer, row in enumerate(grid.tolist()):
        cells = []
        for v in row:
            level = max(-1.0, min(1.0, v))
            fade = int(255 * (1 - abs(level)))
            color = f"rgb({fade},{fade},255)" if level >= 0 else f"rgb(255,{fade},{fade})"
            cells.append(f"[black on {color}]{v:+.2f}[/]")
        table.add_row(str(layer), *cells)
    console = Console()
    console.print(table)
    console.print("positions: " + "  ".join(escape(f"p{label}") for label in labels))


def write_png(grid: torch.Tensor, labels: list[str], title: str, path: Path) -> Path:
    """The same heatmap as a PNG (matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(labels), 1 + 0.25 * grid.shape[0]))
    im = ax.imshow(grid.numpy(), cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_ylabel("layer")
    ax.set_title(title.replace(": ", ":\n", 1), fontsize=10)
    fig.colorbar(im, ax=ax, label="logit difference restored")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(
    model_name: str = "smollm2-135m",
    png: str = "patching_resid_pre.png",
    server: str | None = None,
    local: bool = False,
) -> Path:
    """Run the sweep and show it: on an embedded server (default), a given server, or in-process."""
    t0 = time.perf_counter()
    if local:
        from telelens.core.hooked_transformer import HookedTransformer

        model: Any = HookedTransformer.from_pretrained(model_name)  # what a server serves by default
        where = "in-process"
        return _show(model, png, where, t0)
    import telelens

    if server is not None:
        with telelens.connect(server, model=model_name) as model:
            return _show(model, png, f"server {server}", t0)
    from telelens.server.app import run_server
    from telelens.server.config import ServeConfig

    print(f"starting an embedded server (local Ray, one {model_name} worker) ...")
    with (
        run_server(ServeConfig.for_model(model_name, port=0)) as handle,
        telelens.connect(handle.address, model=model_name) as model,
    ):
        return _show(model, png, f"embedded server {handle.address}", t0)


def _show(model: Any, png: str, where: str, t0: float) -> Path:
    t1 = time.perf_counter()
    grid, labels = run_patching(model)
    t2 = time.perf_counter()
    title = f"resid_pre patching, {model.cfg.model_name}: {CORRUPT!r} <- {CLEAN!r}"
    print_heatmap(grid, labels, title)
    out = write_png(grid, labels, title, Path(png))
    print(
        f"{where}: ready in {t1 - t0:.1f}s; {grid.numel()}-cell sweep in {t2 - t1:.1f}s "
        f"({grid.numel() * 4} bytes of results came back); heatmap written to {out}"
    )
    return out
