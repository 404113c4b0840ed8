#!/usr/bin/env bash
# benchmarks/gpu_check.sh: the first GPU run in one command, inside a budget of 8 minutes, on an
# H100/H200 machine that starts bare (a clone of this repository, a CUDA torch, no network).
#
#   bash benchmarks/gpu_check.sh [OUTDIR]              build, then every step below
#   bash benchmarks/gpu_check.sh --rerun [OUTDIR]      the same, reusing the build
#   bash benchmarks/gpu_check.sh --steps tests,bench-float32 [OUTDIR]     some steps only
#   bash benchmarks/gpu_check.sh --emulated [OUTDIR]   the CI rehearsal (.ci/cuda_emulation), in a
#       tree built with GRU_NATIVE_CUDA_EMULATION=1: no build, no compute-sanitizer, a tiny grid,
#       and a drill step that hangs and must be cut off while the steps after it still run.
#
# OUTDIR (default $OUT when set, else build/gpu_check) receives everything, a few small files:
# report.md (device, date, command, the steps, every figure: ready for benchmarks/RESULTS.md)
# and one log per step (each cut to its first and last 100 KB). The steps, most valuable first,
# each under its own time limit inside the budget (GPU_CHECK_BUDGET seconds, default 480): one
# that runs past its limit is stopped (TERM, then KILL) and reported, and the next one runs; one
# that would start with less than 20 s of budget left is reported as not run.
#   build                 setup.py build_ext --inplace, the CUDA kernels for this GPU's
#                         architecture only (TORCH_CUDA_ARCH_LIST from its compute capability),
#                         MAX_JOBS=16; then gru_native must report CUDA kernels
#   tests                 tests/test_cuda.py (both paths forced, several units per block, ...)
#   bench-float32         benchmarks/bench.py --grid gpu against nn.GRU (cuDNN), TF32 off
#   bench-bfloat16        the same in bfloat16
#   memcheck-persistent   compute-sanitizer memcheck on gru_native's kernels only (a kernel-name
#   memcheck-gemm         filter), PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that an access past a
#                         tensor is past an allocation; a small forward + backward per path
#   racecheck-persistent  compute-sanitizer racecheck on the persistent kernels
# Where compute-sanitizer is missing or cannot attach, its steps say so and count as not run.
# The last thing printed is a one-screen summary; the exit status is 0 when no step failed.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$(command -v python || command -v python3 || echo python)}
budget=${GPU_CHECK_BUDGET:-480}
command="bash benchmarks/gpu_check.sh${*:+ $*}"
emulated=0 rerun=0 only="" out=""
while [ $# -gt 0 ]; do
  case $1 in
    --emulated) emulated=1 ;;
    --rerun) rerun=1 ;;
    --steps) only=$2; shift ;;
    -h|--help) sed -n '2,/^set /p' "$0" | sed '$d'; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
    *) out=$1 ;;
  esac
  shift
done
out=${out:-${OUT:-$root/build/gpu_check}}
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$root"
export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
summary=()   # "- step: STATUS (s) detail" lines
failed=()

# cap FILE: keep the first and last 100 KB of a long log.
cap() {
  local size
  size=$(wc -c < "$1")
  if [ "$size" -gt 204800 ]; then
    { head -c 102400 "$1"; printf '\n[... %d bytes cut ...]\n' $((size - 204800))
      tail -c 102400 "$1"; } > "$1.cut" && mv "$1.cut" "$1"
  fi
}

# step NAME LIMIT DETAIL_FN CMD...: runs CMD under min(LIMIT, budget left), output in NAME.log.
# DETAIL_FN NAME STATUS prints the summary's detail. Sets $status to ok, FAILED, TIMEOUT, or
# "not run". A step not in --steps is left out.
step() {
  local name=$1 limit=$2 detail=$3
  shift 3
  status="not run"
  if [ -n "$only" ] && [[ ",$only," != *",$name,"* ]]; then return 0; fi
  local left=$(( budget - $(elapsed) ))
  if [ $left -lt 20 ]; then
    summary+=("- $name: not run (budget spent: $(elapsed) s of $budget)")
    return 0
  fi
  [ $limit -le $left ] || limit=$left
  echo "+ [$(elapsed) s] $name (limit $limit s): $*"
  local t0 rc
  t0=$(date +%s)
  # (Through bash: CMD may be one of the functions below, exported.)
  timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@" > "$out/$name.log" 2>&1
  rc=$?
  cap "$out/$name.log"
  local took=$(( $(date +%s) - t0 ))
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    status=TIMEOUT
  elif [ $rc -eq 0 ]; then
    status=ok
  else
    status=FAILED
  fi
  summary+=("- $name: $status ($took s) $($detail "$name" "$status" "$rc" 2>/dev/null | head -1)")
  if [ "$status" != ok ] && [ "$name" != drill ]; then failed+=("$name"); fi
  return 0
}

# -- the details each step reports ----------------------------------------------------------------
last_line() { tail -n 1 "$out/$1.log" | cut -c1-150; }
pytest_detail() { grep -E "passed|failed|error" "$out/$1.log" | tail -n 1 | cut -c1-150; }
timeout_detail() { [ "$2" = TIMEOUT ] && echo "stopped at its time limit" || last_line "$1"; }
bench_detail() {
  [ -f "$out/$1.json" ] || { last_line "$1"; return; }
  "$PY" - "$out/$1.json" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
ratios = [(r["results"]["nn.GRU"]["median_s"] / r["results"]["gru_native"]["median_s"], r)
          for r in rows if "nn.GRU" in r["results"] and "gru_native" in r["results"]]
if ratios:
    worst, row = min(ratios, key=lambda x: x[0])
    print(f"{len(rows)} cases; gru_native (auto) vs nn.GRU: worst {worst:.2f}x at {row['shape']} "
          f"{row['mode']}; below 0.8x: {sum(1 for x, _ in ratios if x < 0.8)}; at least 2x: "
          f"{sum(1 for x, _ in ratios if x >= 2)}")
else:
    print(f"{len(rows)} cases")
EOF
}
sanitizer_detail() {
  local log=$out/$1.log
  if grep -q "ERROR SUMMARY\|RACECHECK SUMMARY" "$log"; then
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$log" | tail -n 1 | sed 's/^=* *//'
  else
    last_line "$1"
  fi
}

# -- the machine ----------------------------------------------------------------------------------
if [ $emulated = 1 ]; then
  device=cpu
  "$PY" -c "import gru_native, sys; sys.exit(0 if gru_native.build_info()['cuda_emulation'] else
    'gpu_check.sh --emulated: gru_native here is not the CUDA emulation build')" || exit 1
  machine="CUDA emulation on the CPU (rehearsal, no GPU figures)"
else
  device=cuda
  machine=$("$PY" -c "
import torch
p = torch.cuda.get_device_properties(0)
print(f'{p.name}, {p.multi_processor_count} SMs, sm_{p.major}{p.minor}, torch {torch.__version__}, '
      f'CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}')" 2>&1 | tail -n 1)
fi
echo "+ gpu_check: $machine; output in $out"

# -- 1. build -------------------------------------------------------------------------------------
built() { "$PY" -c "import gru_native, torch, sys
i = gru_native.build_info()
sys.exit(0 if i['cuda'] and torch.cuda.is_available() else f'no CUDA kernels or no GPU: {i}')"; }
build() {
  if ! "$PY" -c "import ninja" 2>/dev/null && ! command -v ninja > /dev/null; then
    echo "gpu_check: ninja not found: the sources compile one at a time"
  fi
  local arch
  arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") || return 1
  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch} GRU_NATIVE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} \
    "$PY" setup.py build_ext --inplace && built
}
build_detail() {
  if [ "$2" = ok ]; then
    "$PY" -c "import gru_native; i = gru_native.build_info(); print('CUDA', i['cuda_arch_list'])"
  else
    grep -iE "error|not found" "$out/$1.log" | tail -n 1 | cut -c1-150
  fi
}
export PY
export -f build built
ready=1
if [ $emulated = 0 ]; then
  if [ $rerun = 1 ] && built > /dev/null 2>&1; then
    summary+=("- build: reused (--rerun)")
  else
    step build 300 build_detail build
    if [ "$status" = FAILED ] || [ "$status" = TIMEOUT ]; then
      ready=0
      summary+=("- the other steps: not run (no build)")
    fi
  fi
fi

# -- 2. tests -------------------------------------------------------------------------------------
if [ $emulated = 1 ]; then
  # A few of the suite's cases (.ci/cuda_emulation runs it all): the command is what is rehearsed.
  tests=(tests/test_cuda.py -k "test_cuda_parity and L2-bi-bf-bias-h0-f32")
else
  tests=(tests/test_cuda.py)
fi
if [ $ready = 1 ]; then
  step tests 180 pytest_detail "$PY" -m pytest -q -p no:cacheprovider "${tests[@]}"
  if [ "$status" = FAILED ] || [ "$status" = TIMEOUT ]; then
    grep -E "^(FAILED|ERROR) " "$out/tests.log" | head -n 15 | cut -c1-150 > "$out/tests-failed.txt"
  fi
  if [ $emulated = 1 ]; then
    # The budget's drill: a step that hangs must be stopped at its limit, reported, and not stop
    # the steps after it.
    step drill 3 timeout_detail sleep 600
    if [ "$status" != TIMEOUT ] && { [ -z "$only" ] || [[ ",$only," == *",drill,"* ]]; }; then
      failed+=("drill (a hung step was not stopped: $status)")
    fi
  fi
fi

# -- 3. the benchmark grid ------------------------------------------------------------------------
if [ $emulated = 1 ]; then
  grid=(--batches 2 --hiddens 16 --steps 3 --budget 0.01 --min-rounds 1 --max-rounds 2
        --cuda-paths)
else
  # T=100 first (the grid's order), then T=1000 while the step's deadline lasts.
  grid=(--steps 100,1000 --budget 0.15 --min-rounds 3 --max-rounds 50)
fi
for dtype in float32 bfloat16; do
  [ $ready = 1 ] || break
  # bench.py starts no new case after --deadline: the step's limit less a case's worth.
  limit=$(( budget - $(elapsed) ))
  [ $limit -le 100 ] || limit=100
  deadline=$(( limit > 30 ? limit - 25 : 5 ))
  step "bench-$dtype" "$limit" bench_detail "$PY" benchmarks/bench.py --device $device \
    --grid gpu --dtype $dtype "${grid[@]}" --deadline $deadline \
    --markdown "$out/bench-$dtype.md" --json "$out/bench-$dtype.json"
done

# -- 4. compute-sanitizer -------------------------------------------------------------------------
cat > "$out/sanitize_case.py" <<EOF
# A small forward + backward of each configuration, for compute-sanitizer (gpu_check.sh).
import torch, gru_native
from torch import nn
for dtype in (torch.float32, torch.bfloat16):
    for layers, bi in ((1, False), (2, True)):
        torch.manual_seed(0)
        ref = nn.GRU(5, 20, layers, bidirectional=bi)
        ours = gru_native.GRU(5, 20, layers, bidirectional=bi).to("$device", dtype)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(4, 3, 5, device="$device", dtype=dtype, requires_grad=True)
        out, hn = ours(x)
        (out.float().square().sum() + hn.float().sum()).backward()
        assert torch.isfinite(x.grad.float()).all()
if "$device" == "cuda":
    torch.cuda.synchronize()
print("sanitizer case ok")
EOF
sanitizer=""
if [ $emulated = 0 ]; then
  for candidate in "$(command -v compute-sanitizer)" \
                   ${CUDA_HOME:+"$CUDA_HOME/bin/compute-sanitizer"} \
                   /usr/local/cuda/bin/compute-sanitizer; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then sanitizer=$candidate; break; fi
  done
fi
# Only gru_native's kernels (not cuBLAS's or torch's): the filter option's name has changed
# across versions.
kernel_filter() {
  if "$sanitizer" --help 2>&1 | grep -q -- "--kernel-name "; then
    echo --kernel-name "kns=$1"
  elif "$sanitizer" --help 2>&1 | grep -q -- "--filter "; then
    echo --filter "kns=$1"
  fi
}
sanitize() {  # sanitize TOOL PATH KERNEL_SUBSTRING
  if [ $emulated = 1 ]; then
    GRU_NATIVE_CUDA_PATH=$2 "$PY" "$out/sanitize_case.py"
    return
  fi
  # shellcheck disable=SC2046
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 GRU_NATIVE_CUDA_PATH=$2 "$sanitizer" --tool "$1" \
    --error-exitcode 99 $(kernel_filter "$3") "$PY" "$out/sanitize_case.py"
}
sanitizer_step() {  # NAME LIMIT TOOL PATH KERNEL_SUBSTRING
  [ $ready = 1 ] || return 0
  if [ $emulated = 0 ] && [ -z "$sanitizer" ]; then
    summary+=("- $1: not run (compute-sanitizer not found: CUDA toolkit's bin/ not on PATH)")
    return 0
  fi
  step "$1" "$2" sanitizer_detail sanitize "$3" "$4" "$5"
  [ "$status" != "not run" ] || return 0
  local last=$(( ${#summary[@]} - 1 ))
  if [ $emulated = 1 ]; then
    summary[$last]+=" (the case alone: compute-sanitizer needs a GPU)"
  elif [ "$status" = TIMEOUT ]; then
    # The tools slow kernels 10-100x: running out of time is not a finding.
    unset 'failed[${#failed[@]}-1]'
    summary[$last]="- $1: not finished (stopped at its time limit; see $1.log)"
  elif [ "$status" = FAILED ] && ! grep -q "sanitizer case ok\|Traceback" "$out/$1.log" &&
       ! grep -qE "(ERROR|RACECHECK) SUMMARY: [1-9]" "$out/$1.log"; then
    # Exit 99 is the tool's report; another failure without our case's last line is the tool
    # not running at all (no permission, a driver it does not support): not a finding.
    unset 'failed[${#failed[@]}-1]'
    summary[$last]="- $1: not run (compute-sanitizer could not run: $(last_line "$1"))"
  fi
}
export PY out emulated sanitizer
export -f sanitize kernel_filter
sanitizer_step memcheck-persistent 90 memcheck persistent gru_native
sanitizer_step memcheck-gemm 90 memcheck gemm gru_native
sanitizer_step racecheck-persistent 120 racecheck persistent persistent_

# -- the report and the summary -------------------------------------------------------------------
commit=$(git rev-parse --short HEAD 2>/dev/null || echo "no git")
{
  echo "## GPU check — $machine — $(date -u +%Y-%m-%d)"
  echo
  echo "Command: \`$command\` at $commit; $(elapsed) s of a $budget s budget."
  echo
  printf '%s\n' "${summary[@]}"
  for dtype in float32 bfloat16; do
    if [ -f "$out/bench-$dtype.md" ]; then echo; cat "$out/bench-$dtype.md"; fi
  done
} > "$out/report.md"
echo
echo "== gpu_check summary: $machine"
printf '%s\n' "${summary[@]}"
if [ -s "$out/tests-failed.txt" ]; then sed 's/^/    /' "$out/tests-failed.txt"; fi
echo "Total: $(elapsed) s of a $budget s budget. Files in $out: $(cd "$out" && ls | tr '\n' ' ')"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "No step failed."
