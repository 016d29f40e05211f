"""The ``telelens`` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="telelens", description="TransformerLens at a distance.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="activation-patching demo on SmolLM2: heatmap in the terminal and a PNG"
    )
    demo.add_argument("--model", default="smollm2-135m", help="model name, alias, folder or .gguf file")
    demo.add_argument("--png", default="patching_resid_pre.png", help="where to write the heatmap")
    where = demo.add_mutually_exclusive_group()
    where.add_argument("--server", help="use a running server (grpc://host:port) instead of an embedded one")
    where.add_argument("--local", action="store_true", help="run in-process, without a server")
    # serve / keys: the server's subcommands (telelens.server.cli)
    from telelens.server import cli as server_cli

    server_cli.add_parsers(sub)
    # models / info: ask a running server (telelens.client.cli)
    from telelens.client import cli as client_cli

    client_cli.add_parsers(sub)
    args = parser.parse_args(argv)

    if args.command == "demo":
        from telelens.demo import main as demo_main

        demo_main(args.model, args.png, server=args.server, local=args.local)
    elif args.command in ("serve", "keys"):
        return server_cli.main(args)
    elif args.command in ("models", "info"):
        return client_cli.main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
