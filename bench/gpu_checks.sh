#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one short run (about 3 minutes on an H200 before the paper-metrics check, whose
# GPU time is not measured yet), each under its own time limit:
# CUDA-graph tests, step_with_logits / step at 7B, TTT cost, Mimi encoding speed, LibriLight one-pass vs two-pass and
# chunked scoring of 24k frames at 7B, greedy chunked vs per-step scoring at 7B (random and audio-driven text),
# paper-metrics batched scoring vs one forward per file at 7B, the server's CUDA graphs and its per-frame latency at 7B.
#     bash bench/gpu_checks.sh            # logs also go to $OUT when it is set
# The CUDA tests and the 7B config read the fixtures in tests/fixtures, as the CPU tests do. The server checks need
# aiohttp, sphn and soundfile: `bash bench/gpu_deps.sh` installs them into .gpu_deps, to carry to the device machine.
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [[ -d .gpu_deps ]]; then export PYTHONPATH="$PYTHONPATH:$PWD/.gpu_deps"; fi
PY=${PYTHON:-python3}
LOGS=${OUT:-/tmp/moshi_gpu_checks}
mkdir -p "$LOGS"

check() {  # check NAME SECONDS COMMAND...
    local name=$1 seconds=$2
    shift 2
    echo "=== $name (limit ${seconds}s)"
    local started=$SECONDS
    timeout "$seconds" "$@" 2>&1 | tee "$LOGS/$name.log"
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - started))s"
}

check env 30 "$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
check cuda_tests 120 "$PY" -m pytest -q -p no:cacheprovider -k "cuda or gpu" \
    tests/utils/test_compile.py tests/models/test_step_with_logits.py tests/models/test_lm_ttt.py
check step_with_logits_7b 120 "$PY" bench/step_with_logits.py --7b
check ttt_cuda 60 "$PY" bench/ttt.py --device cuda --dtype bfloat16
check mimi_cuda 60 "$PY" -m bench.mimi --device cuda
check librilight_7b 300 "$PY" bench/librilight.py --7b --skip-memory --chunk-frames 24000 --chunk-size 1024 \
    --greedy-frames 1024
check greedy_7b 300 "$PY" bench/greedy.py --7b --cases random audio85 --ttt none --batch-sizes 1 --frames 1000 \
    --rounds 1
check server_cuda_graphs 120 "$PY" -m pytest -q -p no:cacheprovider -k cuda tests/server/test_served_model.py
check server_7b 180 "$PY" bench/server.py --7b --device cuda --frames 150
check server_7b_ttt 180 "$PY" bench/server.py --7b --device cuda --frames 100 --ttt-layers 29,30,31
check paper_metrics_7b 240 "$PY" bench/paper_metrics.py --7b --utterances 512 --batch-size 64
