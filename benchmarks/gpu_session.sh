#!/usr/bin/env bash
# Everything a session with a lent GPU runs, in at most two device calls (each under 10 minutes):
#   bash benchmarks/gpu_session.sh test    # install, the whole suite on the GPU, fastelbo check
#   bash benchmarks/gpu_session.sh bench   # install, benchmarks/run.py (W1-W5)
# Logs and results land in $OUT (the device tool brings them back); commit the bench files under
# benchmarks/results/ with the device named.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/fastelbo-gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
case "${1:-test}" in
  test)
    python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest.log" | tail -40
    fastelbo check --seed 1 > "$OUT/check.log" 2>&1
    grep -E "FAIL|passed" "$OUT/check.log" | tail -20
    ;;
  bench)
    python3 benchmarks/run.py --out "$OUT" 2>&1 | tee "$OUT/bench.log"
    ;;
esac
