#!/usr/bin/env bash
# Everything a session with a lent GPU runs, in at most two device calls (each under 10 minutes):
#   bash benchmarks/gpu_session.sh test    # install, the whole suite on the GPU, fastelbo check
#   bash benchmarks/gpu_session.sh bench   # install, fastelbo bench (S1 S2 W1-W7; table, CSV, JSON, MD, PNG)
# Logs and results land in $OUT (the device tool brings them back); commit the bench files under
# benchmarks/results/ with the device named. Without matplotlib on that machine, the bench skips the PNG.
# The C++ backends build just in time with ninja. The GPU machine has no internet: first run
#   pip download ninja hypothesis matplotlib -d .wheels --python-version 3.12 --only-binary=:all:
# here (matching the GPU machine's Python; scikit-learn and scipy are too big to carry, so the demo
# tests skip there) and pass carry [".wheels"] to the device call; this script installs what is
# missing from there.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/fastelbo-gpu}
mkdir -p "$OUT"
for module in ninja hypothesis matplotlib; do
  python3 -c "import $module" 2>/dev/null || python3 -m pip install -q --no-index --find-links .wheels "$module" 2>&1 | tail -2
done
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3
python3 -c "import fastelbo; print(fastelbo.backends())" 2>&1 | tee "$OUT/backends.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
case "${1:-test}" in
  test)
    python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest.log" | tail -40
    fastelbo check --seed 1 > "$OUT/check.log" 2>&1
    grep -E "FAIL|passed" "$OUT/check.log" | tail -20
    ;;
  bench)
    fastelbo bench --out "$OUT" 2>&1 | tee "$OUT/bench.log"
    ;;
esac
