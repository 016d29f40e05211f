"""``telelens models`` and ``telelens info``: what a server serves, from the command line.

    telelens models --server grpc://pool:50051
    telelens info smollm2-135m --server grpc://pool:50051 --hooks

The API key comes from ``--api-key`` or ``$TELELENS_API_KEY``; the server from ``--server``
or ``$TELELENS_SERVER``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

_CONFIG_FIELDS = (
    "model_name", "original_architecture", "n_layers", "d_model", "n_heads", "n_key_value_heads", "d_head",
    "d_mlp", "d_vocab", "n_ctx", "act_fn", "normalization_type", "positional_embedding_type", "gated_mlp",
    "tie_word_embeddings", "dtype", "device", "default_prepend_bos", "default_padding_side",
)  # fmt: skip


def add_parsers(sub: Any) -> None:
    """Register ``models`` and ``info`` on the ``telelens`` subparsers."""
    models = sub.add_parser("models", help="list the models a telelens server serves")
    _connection_args(models)
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info = sub.add_parser("info", help="a served model's config, hooks, weights and tokenizer")
    info.add_argument("model", help="the model's name on the server (see `telelens models`)")
    _connection_args(info)
    info.add_argument("--hooks", action="store_true", help="list every hook point with its dimensions")
    info.add_argument("--weights", action="store_true", help="list every weight with its shape")
    info.add_argument("--json", action="store_true", help="print everything as JSON")


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        default=os.environ.get("TELELENS_SERVER"),
        help="server address, grpc://host:port or grpcs://host:port (default: $TELELENS_SERVER)",
    )
    p.add_argument("--api-key", default=None, help="API key (default: $TELELENS_API_KEY)")
    p.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    p.add_argument("--ca-file", default=None, help="PEM bundle of CAs to trust (implies --tls)")
    p.add_argument("--timeout", type=float, default=None, help="deadline of each call in seconds")


def main(args: argparse.Namespace) -> int:
    """Run ``models`` or ``info``; errors print one line and return 1."""
    from telelens.client.errors import RemoteError

    if not args.server:
        print("telelens: error: pass --server grpc://host:port (or set TELELENS_SERVER)", file=sys.stderr)
        return 2
    tls = args.ca_file if args.ca_file else (True if args.tls else None)
    try:
        if args.command == "models":
            return _models(args, tls)
        return _info(args, tls)
    except (RemoteError, ValueError, OSError) as e:
        print(f"telelens: error: {e}", file=sys.stderr)
        return 1


def _models(args: argparse.Namespace, tls: Any) -> int:
    from telelens.client.remote import list_models

    models = list_models(args.server, api_key=args.api_key, timeout=args.timeout, tls=tls)
    rows: list[dict[str, Any]] = [
        {
            "name": m.name, "architecture": m.architecture, "layers": m.n_layers, "params": m.n_params,
            "replicas": m.replicas, "dtype": m.dtype, "device": m.device,
        }
        for m in models
    ]  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no models (or none this key may use)")
        return 0
    table = [{**r, "params": _count(r["params"])} for r in rows]
    headers = list(table[0])
    widths = {h: max(len(h), *(len(str(r[h])) for r in table)) for h in headers}
    print("  ".join(h.upper().ljust(widths[h]) for h in headers))
    for r in table:
        print("  ".join(str(r[h]).ljust(widths[h]) for h in headers))
    return 0


def _info(args: argparse.Namespace, tls: Any) -> int:
    from telelens.client.remote import model_info
    from telelens.client.results import WIRE_DTYPES

    info = model_info(args.server, args.model, api_key=args.api_key, timeout=args.timeout, tls=tls)
    config = json.loads(info.config_json) if info.config_json else {}
    tokenizer = json.loads(info.tokenizer_config_json) if info.tokenizer_config_json else {}
    hooks = [{"name": h.name, "shape": list(h.shape)} for h in info.hooks]
    weights = [
        {"name": w.name, "shape": list(w.shape), "dtype": WIRE_DTYPES.get(w.dtype, "?")} for w in info.weights
    ]
    if args.json:
        data = {
            "name": info.name,
            "config": config,
            "hooks": hooks,
            "weights": weights,
            "tokenizer": tokenizer,
        }
        print(json.dumps(data, indent=2, default=str))
        return 0
    print(f"{info.name} on {args.server}")
    for key in _CONFIG_FIELDS:
        if key in config:
            print(f"  {key:<26} {config[key]}")
    print(f"  {'weight processing':<26} {weight_processing_line(config)}")
    special = ", ".join(
        f"{kind}={tokenizer.get(f'{kind}_token')!r} ({tokenizer.get(f'{kind}_token_id')})"
        for kind in ("bos", "eos", "pad")
        if tokenizer.get(f"{kind}_token_id") is not None
    )
    print(
        f"  {'tokenizer':<26} {'yes' if info.tokenizer_json else 'none'}{'; ' + special if special else ''}"
    )
    print(f"  {'hooks':<26} {len(hooks)}{'' if args.hooks else ' (--hooks lists them)'}")
    if args.hooks:
        for h in hooks:
            print(f"    {h['name']:<44} [{', '.join(h['shape'])}]")
    print(f"  {'weights':<26} {len(weights)}{'' if args.weights else ' (--weights lists them)'}")
    if args.weights:
        for w in weights:
            print(f"    {w['name']:<44} {w['shape']} {w['dtype']}")
    return 0


def _count(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def weight_processing_line(config: dict[str, Any]) -> str:
    """How the served weights were processed, from the model's config (``weights_processed`` and
    ``weight_processing``, which a server sends; "unknown" from a server that does not)."""
    if "weights_processed" not in config:
        return "unknown (the server does not say)"
    applied = [name for name, on in (config.get("weight_processing") or {}).items() if on]
    if not config["weights_processed"]:
        return "none (as from_pretrained_no_processing: Hugging Face's weights)"
    return "yes: " + ", ".join(applied)
