#!/usr/bin/env bash
# Single-node data-parallel pre-training: one process per GPU (nccl), or per CPU slot (gloo).
#
#   launch/torchrun.sh NPROC CONFIG [key=value ...]   (e.g. overwrite=true to start over)
#   launch/torchrun.sh 8 olmo-30m-8B run_dir=runs/pretrain/olmo-30m-8B
#
# The global batch (global_batch_size sequences) is the same for any NPROC; it must be divisible
# by NPROC x micro_batch_size. Rerunning the same command resumes from the run's latest checkpoint.
# NPROC=auto uses every visible GPU (CUDA_VISIBLE_DEVICES selects them). torchrun sets
# OMP_NUM_THREADS=1 per process unless it is already set. Uses .venv/bin/python when present,
# else $PYTHON (default python3).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
nproc=$1; shift
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
[[ -x "$here/.venv/bin/python" && -z "${PYTHON:-}" ]] && python="$here/.venv/bin/python"
if [[ $nproc == auto ]]; then
  nproc=$("$python" -c 'import torch; print(max(torch.cuda.device_count(), 1))')
fi
exec "$python" -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node="$nproc" -m overtrain pretrain "$@"
