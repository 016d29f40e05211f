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
    args = parser.parse_args(argv)

    if args.command == "demo":
        from telelens.demo import main as demo_main

        demo_main(args.model, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
