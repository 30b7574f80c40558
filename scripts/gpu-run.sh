#!/usr/bin/env bash
# The runner of a GPU bundle (scripts/gpu-bundle.sh copies it to BUNDLE/run.sh): runs the whole
# GPU suite on a machine with an NVIDIA GPU and driver and no Rust toolchain, and ends with one
# summary line: `GPU SUITE PASS|FAIL: …`.
#
#   ./run.sh [--no-bench] [--real-only]      (--real-only: only the real-model tests)
#
# Logs go to $OUT (when set) or ./results. Twins are written to $GPU_WORK (default /tmp/gpu-suite).
# Real models are looked up in $GGUF_MODEL_CACHE (default ./models); a model that is absent is
# reported as "not run", never as passed. Time limits per step (seconds): GPU_T_KERNELS,
# GPU_T_E2E, GPU_T_REAL (240 each), GPU_T_BENCH (120); a step that times out fails.
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
bench=1
real_only=0
for a in "$@"; do
    case $a in
        --no-bench) bench=0 ;;
        --real-only) real_only=1; bench=0 ;;
        *) echo "unknown option $a" >&2; exit 2 ;;
    esac
done
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
logs=${OUT:-$here/results}
work=${GPU_WORK:-/tmp/gpu-suite}
mkdir -p "$logs" "$work"
export GPU_TWIN_DIR=$work GPU_FIXTURE_HEADERS=$here/headers GPU_REFS_DIR=$here/refs
export GGUF_MODEL_CACHE=${GGUF_MODEL_CACHE:-$here/models}
export RUST_BACKTRACE=0

device=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
echo "device: ${device:-unknown (nvidia-smi failed)}"

passed=0; failed=0; notrun=(); failures=()
run_tests() { # SECONDS NAME [FILTER…]
    local limit=$1 name=$2; shift 2
    local log=$logs/$name${1:+-$1}.log
    local t0=$SECONDS
    timeout "$limit" "$here/tests/$name" --include-ignored --test-threads=1 --nocapture "$@" >"$log" 2>&1
    local rc=$?
    grep -E "^test .* \.\.\. |^(device|cpu reference|.*rel L2 median|.*KV cache alone|.*logits.* case|.*generate case)" "$log" | sed 's/^/  /'
    local p f
    p=$(grep -oE "test result: .* ([0-9]+) passed" "$log" | grep -oE "[0-9]+ passed" | awk '{s+=$1} END {print s+0}')
    f=$(grep -oE "[0-9]+ failed" "$log" | tail -1 | awk '{print $1+0}')
    passed=$((passed + p))
    if [ "$rc" -ne 0 ] || [ "${f:-0}" -gt 0 ]; then
        failed=$((failed + ${f:-0}))
        [ "${f:-0}" -eq 0 ] && failed=$((failed + 1))
        failures+=("$name${1:+ $1} (rc $rc)")
        [ "$rc" -eq 124 ] && { echo "  ! timed out after $limit s; last lines:"; tail -5 "$log" | sed 's/^/  ! /'; }
        grep -A8 "panicked at" "$log" | awk '!seen[$0]++' | head -40 | sed 's/^/  ! /'
    fi
    echo "$name${1:+ $1}: rc $rc, $p passed, ${f:-0} failed, $((SECONDS - t0)) s"
}

if [ $real_only -eq 0 ]; then
    run_tests "${GPU_T_KERNELS:-240}" gpu_kernels
    run_tests "${GPU_T_E2E:-240}" gpu_e2e
    run_tests "${GPU_T_GRAPH:-120}" gpu_graph
fi
for m in smollm2 qwen; do
    case $m in
        smollm2) f=smollm2-135m-instruct-q4_1.gguf ;;
        qwen) f=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf ;;
    esac
    if [ -f "$GGUF_MODEL_CACHE/$f" ]; then
        run_tests "${GPU_T_REAL:-240}" gpu_real "$m"
    else
        notrun+=("gpu_real $m (model file $f absent)")
        echo "gpu_real $m: NOT RUN ($f not in $GGUF_MODEL_CACHE)"
    fi
done

bench_ok=0; bench_bad=0
if [ $bench -eq 1 ]; then
    timeout "${GPU_T_BENCH:-120}" ./bin/host kernel-bench all >"$logs/bench.log" 2>&1
    cat "$logs/bench.log"
    bench_ok=$(grep -c "check ok" "$logs/bench.log")
    bench_bad=$(grep -c "CHECK FAILED" "$logs/bench.log")
    if ! grep -q "^q8p" "$logs/bench.log"; then
        bench_bad=$((bench_bad + 1)); failures+=("kernel-bench did not finish")
    fi
fi

verdict=PASS
[ "$failed" -gt 0 ] || [ "$bench_bad" -gt 0 ] || [ ${#failures[@]} -gt 0 ] && verdict=FAIL
echo "GPU SUITE $verdict: tests $passed passed, $failed failed${failures:+ [${failures[*]}]}; not run: ${#notrun[@]}${notrun:+ [${notrun[*]}]}; kernel-bench checks $bench_ok ok, $bench_bad failed; device ${device:-unknown}"
[ "$verdict" = PASS ]
