#!/usr/bin/env bash
# benchmarks/gpu_check.sh: everything a first GPU run must do, in one command, within 8 minutes
# on an H100/H200 machine with 16 cores:
#   1. build gru_native against the machine's CUDA torch (MAX_JOBS=16 pip install
#      --no-build-isolation -e .) and check that the CUDA kernels are in;
#   2. tests/test_cuda.py (parity, packed, half types, gradcheck, determinism, several units per
#      block, side stream); the whole suite too with GPU_CHECK_SUITE=1 (it does not fit the 8
#      minutes with the rest: run `python -m pytest` on its own);
#   3. compute-sanitizer memcheck and racecheck on a small forward + backward of each path
#      (gemm, persistent), float32 and bfloat16, uni- and bidirectional;
#   4. the benchmark grid against nn.GRU (cuDNN) in one process (benchmarks/bench.py --grid gpu):
#      float32 with TF32 off, and bfloat16; inference and training; N 1, 8, 64, 256; H 256, 512,
#      1024; T 100 and 1000; 1-2 layers, uni/bi; each path forced beside the automatic choice.
#      A deadline keeps it inside the budget; the cases it leaves out are listed.
# It appends a section (device, date, commands, every figure) to benchmarks/RESULTS.md and prints
# it. Nothing here is a GPU figure until this has run on a GPU.
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --emulated   # rehearsal on the CPU (CI, .ci/cuda_emulation):
#       in a tree built with GRU_NATIVE_CUDA_EMULATION=1 (gru_native importable from it), no
#       build, no compute-sanitizer, a tiny grid, the results under build/gpu_check/ only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
emulated=0
[ "${1:-}" = "--emulated" ] && emulated=1
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
out=build/gpu_check
mkdir -p "$out"
report=$out/RESULTS.md
: > "$report"
note() { echo "$*" | tee -a "$report"; }

if [ $emulated = 1 ]; then
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  device=cpu
  "$PY" -c "import gru_native, sys; sys.exit(0 if gru_native.build_info()['cuda_emulation'] else
    'gpu_check.sh --emulated: gru_native here is not the CUDA emulation build')"
  machine="CUDA emulation on the CPU (rehearsal, no GPU figures)"
else
  device=cuda
  echo "+ [$(elapsed) s] build: MAX_JOBS=16 pip install --no-build-isolation -e ."
  MAX_JOBS=${MAX_JOBS:-16} GRU_NATIVE_CUDA=1 "$PY" -m pip install -q --no-build-isolation -e . \
    > "$out/build.log" 2>&1 || { tail -60 "$out/build.log"; exit 1; }
  "$PY" -c "
import torch, gru_native
assert torch.cuda.is_available(), 'no GPU'
assert gru_native.build_info()['cuda'], gru_native.build_info()"
  machine=$("$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'{p.name}, {p.multi_processor_count} SMs, torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}')")
fi
note "## GPU check — $machine — $(date -u +%Y-%m-%d)"
note ""
note "Command: \`bash benchmarks/gpu_check.sh${1:+ $1}\`; $(git rev-parse --short HEAD 2>/dev/null || echo 'no git') ; build_info: $("$PY" -c 'import gru_native; i = gru_native.build_info(); print({k: i[k] for k in ("cuda", "cuda_arch_list", "cuda_emulation")})')"
note ""

# -- 2. tests -------------------------------------------------------------------------------------
echo "+ [$(elapsed) s] tests/test_cuda.py"
# A failed step is recorded and the run goes on (the figures are worth having anyway); the exit
# status says whether anything failed.
failed=()
if "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$out/test_cuda.log" 2>&1; then
  note "- tests/test_cuda.py: $(tail -1 "$out/test_cuda.log")"
else
  failed+=(tests/test_cuda.py)
  note "- tests/test_cuda.py FAILED: $(tail -1 "$out/test_cuda.log")"
  tail -40 "$out/test_cuda.log"
fi
if [ "${GPU_CHECK_SUITE:-0}" = 1 ]; then
  # Off by default to stay inside 8 minutes: run `python -m pytest` on its own (its CUDA cases
  # run wherever a GPU is).
  echo "+ [$(elapsed) s] the whole suite"
  if "$PY" -m pytest -q -p no:cacheprovider tests > "$out/suite.log" 2>&1; then
    note "- whole suite: $(tail -1 "$out/suite.log")"
  else
    failed+=(suite)
    note "- whole suite FAILED: $(tail -1 "$out/suite.log")"
    grep -E "^FAILED|^ERROR" "$out/suite.log" | head -20
  fi
fi

# -- 3. compute-sanitizer ---------------------------------------------------------------------------
cat > "$out/sanitize_case.py" <<EOF
# A small forward + backward on each configuration, for compute-sanitizer (and the rehearsal).
import torch, gru_native
from torch import nn
device = "$device"
for dtype in (torch.float32, torch.bfloat16):
    for layers, bi in ((1, False), (2, True)):
        torch.manual_seed(0)
        ref = nn.GRU(5, 20, layers, bidirectional=bi)
        ours = gru_native.GRU(5, 20, layers, bidirectional=bi).to(device, dtype)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(4, 3, 5, device=device, dtype=dtype, requires_grad=True)
        out, hn = ours(x)
        (out.float().square().sum() + hn.float().sum()).backward()
        assert torch.isfinite(x.grad.float()).all()
if device == "cuda":
    torch.cuda.synchronize()
print("sanitizer case ok")
EOF
for path in gemm persistent; do
  if [ $emulated = 1 ]; then
    # (The emulation's own racecheck and memcheck run in .ci/cuda_emulation.)
    GRU_NATIVE_CUDA_PATH=$path "$PY" "$out/sanitize_case.py" > "$out/sanitize-$path.log" 2>&1 \
      && note "- case for the sanitizers, path $path: runs (compute-sanitizer needs a GPU)" \
      || { failed+=("sanitizer case $path"); note "- case for the sanitizers, path $path FAILED"
           tail -30 "$out/sanitize-$path.log"; }
    continue
  fi
  for tool in memcheck racecheck; do
    echo "+ [$(elapsed) s] compute-sanitizer --tool $tool, GRU_NATIVE_CUDA_PATH=$path"
    if GRU_NATIVE_CUDA_PATH=$path compute-sanitizer --tool $tool --error-exitcode 99 \
        "$PY" "$out/sanitize_case.py" > "$out/$tool-$path.log" 2>&1; then
      note "- compute-sanitizer $tool, path $path: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/$tool-$path.log" | tail -1)"
    else
      failed+=("$tool $path")
      note "- compute-sanitizer $tool, path $path FAILED: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/$tool-$path.log" | tail -1)"
      grep -m 20 -E "=========" "$out/$tool-$path.log" || tail -20 "$out/$tool-$path.log"
    fi
  done
done

# -- 4. the benchmark grid ------------------------------------------------------------------------
if [ $emulated = 1 ]; then
  grid=(--batches 2 --hiddens 16 --steps 3 --budget 0.01 --min-rounds 1 --max-rounds 2
        --deadline 60 --cuda-paths)
  dtypes=(float32 bfloat16)
else
  # About 100 s per dtype: T=100 first (the grid's order), then T=1000 while time is left.
  grid=(--steps 100,1000 --budget 0.15 --min-rounds 3 --max-rounds 50 --deadline 100)
  dtypes=(float32 bfloat16)
fi
for dtype in "${dtypes[@]}"; do
  echo "+ [$(elapsed) s] benchmarks/bench.py --grid gpu --dtype $dtype"
  note ""
  "$PY" benchmarks/bench.py --device $device --grid gpu --dtype $dtype "${grid[@]}" \
    --markdown "$out/table-$dtype.md" --json "$out/bench-$dtype.json" > "$out/bench-$dtype.log" 2>&1 \
    || { failed+=("bench $dtype"); note "- bench.py --dtype $dtype FAILED"; tail -30 "$out/bench-$dtype.log"
         continue; }
  cat "$out/table-$dtype.md" >> "$report"
  "$PY" - "$out/bench-$dtype.json" <<'EOF' | tee -a "$report"
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
ratios = [(r["results"]["nn.GRU"]["median_s"] / r["results"]["gru_native"]["median_s"], r)
          for r in rows]
if ratios:
    worst = min(ratios, key=lambda x: x[0])
    print(f"- {len(rows)} cases; gru_native (auto) vs nn.GRU: worst {worst[0]:.2f}x at "
          f"{worst[1]['shape']} {worst[1]['mode']}; below 0.8x: "
          f"{sum(1 for x, _ in ratios if x < 0.8)}, at least 2x: {sum(1 for x, _ in ratios if x >= 2)}")
EOF
done
note ""
if [ ${#failed[@]} -gt 0 ]; then
  note "FAILED: ${failed[*]}."
fi
note "Total: $(elapsed) s."
if [ $emulated = 0 ]; then
  { echo; cat "$report"; } >> benchmarks/RESULTS.md
  echo "+ appended to benchmarks/RESULTS.md"
fi
cat "$report"
[ ${#failed[@]} -eq 0 ]
