#!/usr/bin/env bash
# The GPU check of issue 13 (item 8), prepared for a lent GPU machine (this workplace's `device`
# tool: one H200, 16 cores, 15 minutes, nothing to download there): how many fine-tuning runs
# share one GPU before they slow each other down, the assumption behind `gpus: 0.25` in
# configs/sweeps/cw10-study-gpu.yaml and its cost estimate (benchmarks/bench_runs_per_device.py).
#
#   benchmarks/device_check.sh prepare   here: wheels the machine's image lacks into .whl/, the
#                                        task's Minari dataset into .device-data/ (~13 MB)
#   bash benchmarks/device_check.sh run  there, from the repo root (about 6 min), with
#                                        carry [".whl", ".device-data"]; figures in $OUT
#                                        (EVA_RUNS, LORA_RUNS, SECONDS_PER_WINDOW change it)
#
# The image has torch, transformers, peft, tensorboard, einops, h5py and the rest of eva_rl's
# training dependencies; it lacks gymnasium, minari and farama-notifications (device README).
set -euo pipefail
cd "$(dirname "$0")/.."
TASK=${TASK:-stick-pull-v3}
WHEELS="gymnasium==1.4.0 minari==0.5.4 farama-notifications==0.0.6"

case "${1:-}" in
prepare)
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  grep -qx '/.device-data/' .git/info/exclude || echo '/.device-data/' >> .git/info/exclude
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_17_x86_64 -d .whl $WHEELS
  root=$(.venv/bin/python -c "from eva_rl.data.catalog import datasets_root; print(datasets_root())")
  rm -rf .device-data && mkdir -p .device-data/metaworld
  cp -r "$root/metaworld/$TASK" .device-data/metaworld/
  du -sh .whl .device-data
  ;;
run)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD MINARI_DATASETS_PATH=$PWD/.device-data PYTHONUNBUFFERED=1
  out=${OUT:-/tmp}
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)"
    nproc
  } | tee "$out/machine.txt"
  bench() {  # method, then the numbers of runs at once
    python3 benchmarks/bench_runs_per_device.py --method "$1" --task "$TASK" --runs "${@:2}" \
      --seconds "${SECONDS_PER_WINDOW:-20}" --batch 128 2>"$out/$1.err" | tee "$out/$1.txt"
  }
  bench eva ${EVA_RUNS:-1 2 4 8 16}
  bench lora ${LORA_RUNS:-1 4 16}
  ;;
*)
  echo "usage: benchmarks/device_check.sh prepare|run" >&2
  exit 2
  ;;
esac
