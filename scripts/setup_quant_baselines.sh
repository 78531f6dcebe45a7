#!/usr/bin/env bash
# Installs the two external 4-bit baselines used next to t2n's own Q4_0 (scripts/_quant_baselines.py):
#
#  (i)  llama.cpp's llama-imatrix, llama-quantize and llama-perplexity, plus its convert_hf_to_gguf.py and gguf-py.
#       llama.cpp itself is not on a reachable registry, but the source distribution of the PyPI
#       package llama-cpp-python vendors a complete llama.cpp tree (vendor/llama.cpp: tools/,
#       convert_hf_to_gguf.py, conversion/, gguf-py/). That sdist is downloaded with pip (never
#       built as a Python package), unpacked, and only the two tools are built with CMake:
#       CPU only, Release, static libraries, no OpenSSL/HTTPS, no server, tests or examples.
#  (ii) a virtual environment with the PyPI package auto-round (Intel AutoRound) on the local CPU
#       torch 2.13.0 (installed first, then held with a constraints file so that nothing
#       upgrades it to a CUDA build).
#
# Idempotent: a step whose result is already there is skipped (delete the folder to redo it).
#
#   scripts/setup_quant_baselines.sh [--llamacpp-only | --autoround-only]
#
# Environment overrides:
#   LLAMACPP_DIR     where the sdist, its unpacked tree and the build go   (/work/llamacpp)
#   AUTOROUND_VENV   the auto-round virtual environment                   (/work/autoround-venv)
#   LLAMA_CPP_PYTHON_VERSION  the llama-cpp-python sdist to take llama.cpp from (0.3.36)
#   AUTO_ROUND_VERSION        (0.16.1)
#   JOBS             parallel compile jobs (2)
#   PYTHON           the interpreter that creates the venv and runs pip download (python3)
set -euo pipefail

LLAMACPP_DIR=${LLAMACPP_DIR:-/work/llamacpp}
AUTOROUND_VENV=${AUTOROUND_VENV:-/work/autoround-venv}
LCP_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
AR_VERSION=${AUTO_ROUND_VERSION:-0.16.1}
JOBS=${JOBS:-2}
PYTHON=${PYTHON:-python3}
TORCH_PIN="torch==2.13.0"

do_llamacpp=1
do_autoround=1
case "${1:-}" in
  --llamacpp-only) do_autoround=0 ;;
  --autoround-only) do_llamacpp=0 ;;
  "") ;;
  *) echo "usage: $0 [--llamacpp-only | --autoround-only]" >&2; exit 2 ;;
esac

say() { echo "[setup_quant_baselines] $*" >&2; }

# ------------------------------------------------------------------------------------------------
# (i) llama.cpp from the llama-cpp-python sdist

setup_llamacpp() {
  local sdist="$LLAMACPP_DIR/llama_cpp_python-$LCP_VERSION.tar.gz"
  local tree="$LLAMACPP_DIR/llama_cpp_python-$LCP_VERSION"
  local src="$tree/vendor/llama.cpp"
  local build="$LLAMACPP_DIR/build-$LCP_VERSION"
  mkdir -p "$LLAMACPP_DIR"

  if [[ ! -f "$sdist" ]]; then
    say "downloading the llama-cpp-python $LCP_VERSION sdist (about 75 MB)"
    "$PYTHON" -m pip download --no-deps --no-binary :all: \
      "llama-cpp-python==$LCP_VERSION" -d "$LLAMACPP_DIR" >&2
  fi
  if [[ ! -f "$src/tools/imatrix/imatrix.cpp" ]]; then
    say "unpacking $sdist"
    tar -xzf "$sdist" -C "$LLAMACPP_DIR"
  fi
  for f in tools/imatrix/imatrix.cpp tools/quantize/quantize.cpp convert_hf_to_gguf.py \
           gguf-py/gguf/__init__.py; do
    if [[ ! -f "$src/$f" ]]; then
      say "error: $src/$f is missing: this sdist does not vendor the llama.cpp tools;" \
          "pick another LLAMA_CPP_PYTHON_VERSION"
      exit 1
    fi
  done
  ln -sfn "$src" "$LLAMACPP_DIR/llama.cpp"

  if [[ ! -x "$build/bin/llama-imatrix" || ! -x "$build/bin/llama-quantize" ||
        ! -x "$build/bin/llama-perplexity" ]]; then
    say "configuring llama.cpp (CPU, Release, static) in $build"
    cmake -S "$src" -B "$build" -G "Unix Makefiles" \
      -DCMAKE_BUILD_TYPE=Release \
      -DBUILD_SHARED_LIBS=OFF \
      -DGGML_NATIVE=ON \
      -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_OPENCL=OFF -DGGML_SYCL=OFF \
      -DGGML_HIP=OFF -DGGML_BLAS=OFF -DGGML_RPC=OFF \
      -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
      -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
      -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DLLAMA_LLGUIDANCE=OFF >&2
    say "building llama-imatrix, llama-quantize and llama-perplexity with -j$JOBS"
    local t0=$SECONDS
    cmake --build "$build" --config Release -j "$JOBS" --target llama-imatrix llama-quantize \
      llama-perplexity >&2
    say "built in $((SECONDS - t0)) s"
  fi
  ln -sfn "$build" "$LLAMACPP_DIR/build"
  local commit=""
  if git -C "$src" rev-parse HEAD >/dev/null 2>&1; then
    commit=$(git -C "$src" rev-parse --short HEAD)
  fi
  {
    echo "llama.cpp source: $src (from llama-cpp-python $LCP_VERSION sdist${commit:+, commit $commit})"
    echo "llama-imatrix:    $build/bin/llama-imatrix"
    echo "llama-quantize:   $build/bin/llama-quantize"
    echo "llama-perplexity: $build/bin/llama-perplexity"
    echo "convert script:   $src/convert_hf_to_gguf.py (PYTHONPATH=$src/gguf-py)"
  }
}

# ------------------------------------------------------------------------------------------------
# (ii) auto-round in its own virtual environment

setup_autoround() {
  local py="$AUTOROUND_VENV/bin/python"
  if [[ ! -x "$py" ]]; then
    say "creating $AUTOROUND_VENV"
    "$PYTHON" -m venv "$AUTOROUND_VENV"
    "$py" -m pip install -q --upgrade pip >&2
  fi
  local cons="$AUTOROUND_VENV/torch-constraint.txt"
  echo "$TORCH_PIN" > "$cons"
  if ! "$py" -c "import torch, sys; sys.exit(not torch.__version__.startswith('2.13.0'))" \
       2>/dev/null; then
    say "installing $TORCH_PIN (the local CPU wheel) first"
    "$py" -m pip install "$TORCH_PIN" >&2
  fi
  if ! "$py" - "$AR_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
import auto_round, transformers, gguf, accelerate, datasets  # noqa: F401
sys.exit(version("auto-round") != sys.argv[1])
EOF
  then
    say "installing auto-round==$AR_VERSION, transformers, gguf, accelerate (torch held at 2.13.0)"
    "$py" -m pip install -c "$cons" "auto-round==$AR_VERSION" transformers gguf accelerate \
      datasets sentencepiece safetensors >&2
  fi
  "$py" - <<'EOF'
from importlib.metadata import version
import sys
names = ("auto-round", "torch", "transformers", "gguf", "accelerate", "datasets")
print(f"auto-round venv:  {sys.prefix}")
print("  " + ", ".join(f"{n} {version(n)}" for n in names))
EOF
}

if (( do_llamacpp )); then setup_llamacpp; fi
if (( do_autoround )); then setup_autoround; fi
