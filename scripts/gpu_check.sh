#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py): MaskForge's GPU figures as name=value lines, in under 6 minutes,
# from a fresh copy of the tree on a machine whose Python has torch and torchvision and nothing else of ours.
#   scripts/gpu_check.sh          on the GPU (resnet50 FPN, 400 px chips)
#   scripts/gpu_check.sh --cpu    small sizes on the CPU (run by the test suite)
# Polygon tracing needs rasterio and shapely: taken from the Python if it has them, else installed into
# .gpu_check_deps/ from a wheel folder ($MASKFORGE_WHEELS, or shared/wheels) or, failing that, the package
# index; without them the check still prints the network and training figures and says tracing_skipped.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=$(command -v python3 || command -v python); fi
fi
if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
  echo "error=this Python ($PY) has no torch/torchvision; set PYTHON=/path/to/python"; exit 2
fi
pins() { for p in "$@"; do grep -E "^$p==" requirements.txt | cut -d' ' -f1; done; }
missing() { "$PY" -c "import numpy, rasterio, shapely, affine" 2>/dev/null && return 1 || return 0; }
if missing; then
  deps=.gpu_check_deps
  export PYTHONPATH="$PWD/$deps${PYTHONPATH:+:$PYTHONPATH}"
  if missing; then
    wheels=${MASKFORGE_WHEELS:-shared/wheels}
    want=""   # only what this Python lacks: never shadow the numpy torch was installed with
    for m in numpy affine rasterio shapely; do "$PY" -c "import $m" 2>/dev/null || want="$want $(pins $m)"; done
    echo "gpu_check: installing$want into $deps for polygon tracing (up to 2 min; at most 4 if the index is needed)" >&2
    if [ -d "$wheels" ]; then
      timeout 120 "$PY" -m pip install -q --no-index --find-links "$wheels" --target "$deps" $want >&2 || true
    fi
    if missing; then
      timeout 120 "$PY" -m pip install -q --timeout 10 --retries 0 --target "$deps" $want >&2 || true
    fi
  fi
fi
# --foreground: timeout keeps the terminal's process group, so Ctrl-C reaches the check (which says what finished).
exec timeout --foreground 340 "$PY" scripts/gpu_check.py "$@"
