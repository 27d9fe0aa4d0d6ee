#!/usr/bin/env bash
# The stand-in check (issue 20): the first minutes of `make gpu-check`, here, on a stand-in of the
# GPU image, before any device time is spent:
#
#     make gpu-standin                        # downloads and checks .whl/ (make gpu-wheels), then this
#     bash benchmarks/gpu_standin.sh [gpu_check.py options]
#
# 1. a venv of Python 3.12 (the image's minor version: python3.12 on PATH, else pyenv's, else $PY312)
#    in $STANDIN_DIR (default /tmp/overtrain-gpu-standin), holding what the image has and the check
#    needs (`gpu_wheels.py standin-requirements`): torch 2.11.0 (PyPI's CUDA build, imported here
#    without a GPU, as on the image before CUDA is touched), numpy 2.5.2, transformers 5.17.0 and the
#    other versions recorded in gpu_image_packages.txt, the rest at PyPI's newest; and protobuf
#    5.29.5 ($STANDIN_PROTOBUF), older than the carried generated code, as the image's may be;
# 2. benchmarks/gpu_run.sh --dry-run with that venv's python: the carried wheels installed into a
#    fresh site dir exactly as on the GPU machine (--no-index --no-deps --target, first on the path),
#    the preflight (which prints the protobuf actually imported), then every step on CPU;
# 3. the control: `import olmo` with the venv's old protobuf ahead of the carried one fails.
#
# The first run downloads ~3 GB (torch 2.11 and its CUDA libraries; pip caches them), then ~1 min.
# Not in `make test`: minutes, and a download.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${STANDIN_DIR:-/tmp/overtrain-gpu-standin}
HOST=${HOST_PYTHON:-.venv/bin/python}
is312() { [ -n "$1" ] && [ "$("$1" -c 'import sys; print(sys.version_info[:2] == (3, 12))' 2> /dev/null)" = True ]; }
if [ -z "${PY312:-}" ]; then  # a pyenv shim exists where 3.12 is installed but not selected: try each
  for p in $(command -v python3.12) "$HOME"/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12; do
    if is312 "$p"; then PY312=$p && break; fi
  done
fi
if ! is312 "${PY312:-}"; then
  echo "gpu_standin: no Python 3.12 found; set PY312=/path/to/python3.12" >&2
  exit 2
fi
mkdir -p "$DIR"
"$HOST" benchmarks/gpu_wheels.py check-wheels
"$HOST" benchmarks/gpu_wheels.py standin-requirements --protobuf "${STANDIN_PROTOBUF:-5.29.5}" > "$DIR/requirements.txt"
[ -x "$DIR/venv/bin/python" ] || "$PY312" -m venv "$DIR/venv"
"$DIR/venv/bin/python" -m pip install -q --upgrade -r "$DIR/requirements.txt"
echo "gpu_standin: $("$DIR/venv/bin/python" -c 'import sys, torch, numpy, google.protobuf as p; print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), numpy {numpy.__version__}, the image-like protobuf {p.__version__}")')"
rm -rf "$DIR/site" "$DIR/results"
start=$(date +%s.%N)
status=0
PYTHON="$DIR/venv/bin/python" GPU_SITE="$DIR/site" bash benchmarks/gpu_run.sh --dry-run --results-dir "$DIR/results" "$@" || status=$?
echo "gpu_standin: gpu_run.sh --dry-run exit $status in $(python3 -c "import time; print(f'{time.time() - $start:.0f}')") s; results in $DIR/results"
# The control: the same imports with the venv's (image-like) protobuf ahead of the carried one must
# fail, or this stand-in no longer shows what carrying protobuf prevents.
if PYTHONPATH="$DIR/site" "$DIR/venv/bin/python" -c "import sys; sys.path.remove('$DIR/site'); sys.path.append('$DIR/site'); import olmo" 2> "$DIR/control.log"; then
  echo "gpu_standin: control: import olmo passed with protobuf ${STANDIN_PROTOBUF:-5.29.5} first (not a stand-in for an old protobuf)"
else
  echo "gpu_standin: control: with protobuf ${STANDIN_PROTOBUF:-5.29.5} first, import olmo fails as expected: $(tail -1 "$DIR/control.log")"
fi
exit $status
