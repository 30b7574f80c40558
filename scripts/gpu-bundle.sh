#!/usr/bin/env bash
# Builds the GPU suite into one folder (at most 60 MB) that runs on a machine with an NVIDIA GPU
# and driver and no Rust toolchain:
#   bin/host, bin/fixtures      release binaries (stripped; `host kernel-bench`, twins)
#   tests/gpu_*                 the GPU test executables (spec-tests/tests/gpu_*.rs)
#   headers/*.header.gguf       the real models' headers (twins are made from them there)
#   refs/                       the reference outputs the real-model tests compare with
#   run.sh                      the runner (scripts/gpu-run.sh): ends with a pass/fail summary line
#
#   scripts/gpu-bundle.sh [OUT_DIR]            default OUT_DIR: bundle/ (git-ignored)
#   then, on the GPU machine:  OUT_DIR/run.sh
#
# Builds in target/bundle (its own profile settings: no debug info, stripped symbols), so the
# normal release build is left alone.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/bundle}
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/bundle}
export CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols
tests=(gpu_kernels gpu_e2e gpu_real gpu_graph)

cargo build --release -p host -p fixtures --bins
json=$(mktemp)
cargo test --release -p spec-tests $(printf -- '--test %s ' "${tests[@]}") --no-run --message-format=json >"$json"

rm -rf "$out"
mkdir -p "$out/bin" "$out/tests" "$out/headers" "$out/refs"
cp "$CARGO_TARGET_DIR/release/host" "$CARGO_TARGET_DIR/release/fixtures" "$out/bin/"
python3 - "$json" "$out/tests" "${tests[@]}" <<'PY'
import json, shutil, sys
src, dst, want = sys.argv[1], sys.argv[2], set(sys.argv[3:])
found = set()
for line in open(src):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in want:
        shutil.copy(m["executable"], f"{dst}/{m['target']['name']}")
        found.add(m["target"]["name"])
missing = want - found
if missing:
    sys.exit(f"test executables not built: {sorted(missing)}")
PY
rm -f "$json"
strip "$out"/bin/* "$out"/tests/* 2>/dev/null || true
cp fixtures/headers/*.header.gguf "$out/headers/"
refs=""
for cand in "$root/../shared/refs" "$root/shared/refs"; do
    [ -d "$cand" ] && { refs=$cand; break; }
done
if [ -n "$refs" ]; then
    mkdir -p "$out/refs/logits" "$out/refs/generate"
    cp "$refs"/logits/*.jsonl "$out/refs/logits/"
    cp "$refs"/generate/*.jsonl "$out/refs/generate/"
else
    echo "warning: shared/refs not found; the real-model reference tests will fail in this bundle" >&2
fi
cp scripts/gpu-run.sh "$out/run.sh"
chmod +x "$out/run.sh"
size=$(du -sb "$out" | cut -f1)
echo "bundle: $out, $((size / 1024 / 1024)) MiB"
ls -la "$out/bin" "$out/tests"
if [ "$size" -gt $((60 * 1000 * 1000)) ]; then
    echo "error: the bundle is larger than 60 MB" >&2
    exit 1
fi
