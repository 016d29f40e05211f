"""``telelens serve`` and ``telelens keys``: the server's command-line subcommands."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``serve`` and ``keys`` on the ``telelens`` command's subparsers."""
    serve = sub.add_parser("serve", help="run the gRPC server (Ray workers, API keys, streamed results)")
    serve.add_argument("--config", help="YAML config file (see docs/server.md and deploy/serve.yaml)")
    serve.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[NAME=]SOURCE",
        help="serve this model (alias, hub name, folder or .gguf); repeatable; added to --config's models",
    )
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (default 50051; 0 picks a free one)")
    serve.add_argument("--data-dir", help="server state folder (Ray session files when embedded)")
    serve.add_argument("--check", action="store_true", help="print the validated config and exit")

    keys = sub.add_parser("keys", help="manage API keys (stored hashed in a keys file)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    add = keys_sub.add_parser("add", help="create a key, store its hash, print the key once")
    add.add_argument("name", help="who the key is for (unique in the file)")
    add.add_argument("--keys-file", required=True, help="the YAML keys file (created if missing)")
    add.add_argument("--models", default="*", help='comma-separated model names, or "*" (default)')
    add.add_argument("--allow-code", action="store_true", help="the key may send code hooks")
    add.add_argument("--priority", type=int, default=0, help="scheduling priority (higher first)")
    revoke = keys_sub.add_parser(
        "revoke", help="remove a key (a running server refuses it from its next reload)"
    )
    revoke.add_argument("name", help="the key's name")
    revoke.add_argument("--keys-file", required=True, help="the YAML keys file")


def main(args: argparse.Namespace) -> int:
    if args.command == "keys":
        return _keys(args)
    return _serve(args)


def _config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from telelens.server.config import config_from_dict, config_to_dict, default_model_name, load_config

    if args.config is None and not args.model:
        raise SystemExit("telelens serve: give --config FILE or --model SOURCE")
    config = load_config(args.config) if args.config else None
    data = config_to_dict(config) if config is not None else {}
    for spec in args.model:
        name, sep, source = spec.partition("=")
        if not sep:
            name, source = default_model_name(spec), spec
        data.setdefault("models", []).append({"name": name, "source": source})
    for field in ("host", "port", "data_dir"):
        value = getattr(args, field)
        if value is not None:
            data[field] = value
    return config_from_dict(data, source=args.config)


def _serve(args: argparse.Namespace) -> int:
    from telelens.server.config import ConfigError, describe

    try:
        config = _config(args)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    if args.check:
        print(describe(config))
        print(f"# configuration OK: {len(config.models)} model(s)")
        return 0

    from telelens.server.app import run_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    with run_server(config) as server:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        names = ", ".join(m.name for m in config.models)
        print(f"telelens serve: listening on {server.address} (models: {names})", flush=True)
        stop.wait()
        print(f"telelens serve: stopping (grace {config.grace_seconds:.0f} s)", flush=True)
    return 0


def _keys(args: argparse.Namespace) -> int:
    from telelens.server._private.auth import add_key, revoke_key

    if args.keys_command == "revoke":
        try:
            revoke_key(args.keys_file, args.name)
        except (ValueError, OSError) as e:  # ConfigError is a ValueError
            print(f"telelens keys revoke: {e}", file=sys.stderr)
            return 2
        print(f"# removed {args.name!r}'s key from {args.keys_file}", file=sys.stderr)
        return 0
    models = None if args.models.strip() == "*" else [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        key = add_key(args.keys_file, args.name, models, args.allow_code, args.priority)
    except (ValueError, OSError) as e:  # ConfigError is a ValueError
        print(f"telelens keys add: {e}", file=sys.stderr)
        return 2
    print(key)
    print(
        f"# stored the hash of {args.name!r}'s key in {args.keys_file}; the key is not shown again",
        file=sys.stderr,
    )
    return 0
