#!/usr/bin/env bash
# `make gpu-check` on the GPU machine, from the repository root, with no venv (benchmarks/README.md,
# "GPU check"):
#
#     bash benchmarks/gpu_run.sh [benchmarks/gpu_check.py options]
#
# 1. installs the carried wheels (.whl/, made here by `benchmarks/gpu_wheels.py download`) with
#    --no-deps into /tmp/site, beside the machine's own torch, numpy and friends (no index there);
# 2. makes `import overtrain` find this working tree: the repository root is the package, so a
#    symlink named overtrain to it goes on PYTHONPATH (nothing is installed into site-packages);
# 3. runs benchmarks/gpu_check.py with the machine's python3, copying its results to $OUT if set.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SITE=${GPU_SITE:-/tmp/site}
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
fi
LINKS=$(mktemp -d)
ln -s "$PWD" "$LINKS/overtrain"
export PYTHONPATH="$SITE:$LINKS${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" benchmarks/gpu_check.py ${OUT:+--copy-to "$OUT"} "$@"
