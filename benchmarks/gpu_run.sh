#!/usr/bin/env bash
# `make gpu-check` on the GPU machine, from the repository root, with no venv (benchmarks/README.md,
# "GPU check"):
#
#     bash benchmarks/gpu_run.sh [--full] [benchmarks/gpu_check.py options]
#
# 0. notes the command's start (GPU_CHECK_T0: gpu_check.py's --budget-s counts from here);
# 1. installs the carried wheels (.whl/, made and checked here by `make gpu-wheels`) with --no-deps
#    into /tmp/site, beside the machine's own torch, numpy and friends (no index there). No wheels,
#    or a wheel that does not install: it stops at once (exit 3) with the fix, before any step;
#    GPU_WHEELS=none skips this on purpose (a machine whose python3 has every dependency);
# 2. makes `import overtrain` find this working tree: the repository root is the package, so a
#    symlink named overtrain to it goes on PYTHONPATH (nothing is installed into site-packages);
#    /tmp/site comes first, so the carried protobuf shadows the image's (gpu_wheels.IMAGE_OVERRIDES);
# 3. runs benchmarks/gpu_check.py with the machine's python3 (its preflight stops in seconds if an
#    import fails); with $OUT set (the device tool), the results are rewritten there after every
#    step and the whole output goes to $OUT/gpu-check.log as it comes.
set -euo pipefail
export GPU_CHECK_T0=${GPU_CHECK_T0:-$(date +%s.%N)}
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=${GPU_SITE:-/tmp/site}
WHEELS=${GPU_WHEELS:-.whl}
FIX='here (not on the GPU machine), run `make gpu-wheels` in the checkout the device tool sends (it downloads and checks .whl/), then call with carry: [".whl"] (benchmarks/README.md, "GPU check")'
fail() {
  echo "gpu_run: $1" >&2
  if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && echo "gpu_run: $1" > "$OUT/gpu-check-failed.txt"; fi
  exit 3
}
if [ "$WHEELS" != none ]; then
  compgen -G "$WHEELS/*.whl" > /dev/null || fail "no wheels in $WHEELS/ (they did not travel); fix: $FIX"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl \
    || fail "pip could not install the wheels in $WHEELS/ (its message above); fix: $FIX"
fi
LINKS=$(mktemp -d)
ln -s "$PWD" "$LINKS/overtrain"
export PYTHONPATH="$SITE:$LINKS${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -z "${OUT:-}" ]; then
  exec "$PY" benchmarks/gpu_check.py "$@"
fi
mkdir -p "$OUT"
"$PY" benchmarks/gpu_check.py --copy-to "$OUT" "$@" 2>&1 | tee "$OUT/gpu-check.log"
