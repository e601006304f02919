#!/usr/bin/env bash
# Every GPU figure and check of docs/training.md in one run, for a session with a lent GPU (about 6 minutes):
#   1. the CUDA tests of tests/test_train.py (device feed = CPU batches to 1e-5, resident = staged bit for bit,
#      a short CUDA training run, the NaN check deferred to the epoch's end);
#   2. bench.train's CUDA rows: real input path vs resident batch at 124 and 64 px, staged path,
#      train.compile on vs off, and a whole `--profile paper` run (compile off and on).
# Needs only what the device image has (torch, torchvision, pyarrow, numpy, typer, tqdm, pyyaml, pytest): no
# wheels to carry. From the device tool:  run(command="bash bench/gpu_check.sh", timeout_s=540)
# Output: stdout, and $OUT/gpu_check.txt when $OUT is set.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log="${OUT:-/tmp}/gpu_check.txt"
py=$(command -v python3 || command -v python)
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  echo "== CUDA tests (conftest off: it builds the synthetic media the training tests do not need)"
  timeout 150 "$py" -m pytest -q -p no:cacheprovider --noconftest tests/test_train.py -k "cuda" -rs
  echo "== bench.train --cuda"
  timeout 420 "$py" -m bench.train --cuda
} 2>&1 | tee "$log"
