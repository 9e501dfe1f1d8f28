#!/usr/bin/env bash
# The GPU check (issue 13) in one command: set up on the GPU image, build carseg against its
# torch, make a small data set, train 2 epochs on the GPU (fp16 engine), export fp32 and fp16
# artifacts (TorchScript, ONNX, AOTInductor in a child process), verify them on the GPU, run
# the CUDA ctest and `pytest -m gpu` cases, time carseg_infer and every Python backend on CUDA,
# and run folders of full-size JPEGs end to end. Budget: 8 minutes on an H100. The first run
# (H200, 2026-11-27) and what it found: benchmarks/results/gpu-nvidia-h200/results.md.
#
# On the device machine, with .whl/ and .debs/ from `bash ../shared/device/fetch-wheels.sh`
# carried (the tool's `run`, carry [".whl", ".debs"]):
#     bash benchmarks/gpu/check.sh                  # results: at most 8 files in $OUT
# Rehearsal on a CPU machine, through every step a CPU can take (`make gpu-rehearsal`):
#     DEVICE=cpu PY=.venv/bin/python bash benchmarks/gpu/check.sh
#
# Every step is timed and its exit status kept (steps.tsv); a failed step does not stop the
# ones that do not need it. Files in $OUT: log.txt (everything), steps.tsv, summary.md (the
# targets, measured), bench_cpp.json, bench_py.json (python -m benchmarks), e2e.json,
# details.tar.gz (the rest).
set -uo pipefail

DEVICE=${DEVICE:-cuda}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/out/gpu-check}
WORK=${WORK:-/tmp/carseg-gpu-check}
PY=${PY:-python3}
QUICK=${QUICK:-0}  # 1: fewer iterations (a rehearsal's timings mean nothing anyway)
rm -rf "$WORK"  # a scratch folder: each check starts from nothing
mkdir -p "$OUT" "$WORK"
LOG=$OUT/log.txt
STEPS=$OUT/steps.tsv
: > "$LOG"
printf 'step\trc\tseconds\n' > "$STEPS"
cd "$ROOT" || exit 2

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
START=$(now)
# Seconds after which the remaining optional steps are skipped, so that the summary is still
# written inside the device's time limit (the tool returns $OUT even when a command overruns,
# but a summary needs the script to end). The steps run most important first.
BUDGET=${BUDGET:-$([ "$DEVICE" = cuda ] && echo 470 || echo 100000)}
# step NAME CMD...: runs CMD (a function or a program), logs its output, records rc and time.
# ONLY (an extended regex of step names) runs those steps alone: a second call in one lease,
# after a fix, reruns what the first call found broken, e.g.
#     ONLY='wheels|environment|build|data|train|ctest|pytest_gpu|aoti|summary' NUM=32 EPOCHS=1
step() {
  local name=$1 t0 rc
  shift
  if [ -n "${ONLY:-}" ] && ! [[ $name =~ ^(${ONLY})$ ]]; then
    printf '%s\tskipped\t0\n' "$name" >> "$STEPS"
    return 0
  fi
  if [ "${OPTIONAL:-0}" = 1 ] && awk -v e="$(elapsed "$START")" -v b="$BUDGET" \
      'BEGIN { exit !(e > b) }'; then
    printf '%s\tskipped\t0\n' "$name" >> "$STEPS"
    echo "=== $name: skipped, the budget of ${BUDGET} s is spent" | tee -a "$LOG"
    return 0
  fi
  t0=$(now)
  echo "=== $name" | tee -a "$LOG"
  "$@" >> "$LOG" 2>&1
  rc=$?
  printf '%s\t%s\t%.1f\n' "$name" "$rc" "$(elapsed "$t0")" >> "$STEPS"
  echo "=== $name: exit $rc" | tee -a "$LOG"
  return $rc
}
# step_in_background NAME CMD...: `step` in a background subshell, logging to its own file, for
# CPU work beside other steps; step_join NAME waits for it, appends its log to log.txt and
# returns 0 if it ran and passed (steps.tsv has its line).
declare -A BG_PIDS
step_in_background() {
  : > "$WORK/$1.log"
  (LOG=$WORK/$1.log step "$@") &
  BG_PIDS[$1]=$!
}
step_join() {
  local rc
  wait "${BG_PIDS[$1]}"
  cat "$WORK/$1.log" >> "$LOG"
  rc=$(awk -F'\t' -v n="$1" '$1 == n { rc = $2 } END { print rc }' "$STEPS")
  echo "=== $1 (joined): exit ${rc:-none}" | tee -a "$LOG"
  [ "$rc" = 0 ]
}

# ---------------------------------------------------------------------------- set-up
# The GPU image has torch (2.11, CUDA 13), pybind11, cmake, ninja, onnx, onnxruntime; the
# rest travels as wheels (Python 3.12) and Debian packages, unpacked out of the way.
SYSROOT_BUILD_ENV=()
if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
  step wheels "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -d .debs ] && ls .debs/*.deb > /dev/null 2>&1; then
  mkdir -p /tmp/sysroot
  for f in .debs/*.deb; do dpkg -x "$f" /tmp/sysroot; done
  # zlib1g-dev brings headers, a static libz.a (not built -fPIC, so it cannot go into
  # libcarseg.so) and a libz.so link to a libz.so.1 it does not bring: point the link at the
  # image's shared zlib and drop the static one, or ld takes libz.a and fails.
  SYSLIB=/tmp/sysroot/usr/lib/x86_64-linux-gnu
  rm -f "$SYSLIB/libz.a"
  for z in /usr/lib/x86_64-linux-gnu/libz.so.1 /lib/x86_64-linux-gnu/libz.so.1; do
    [ -e "$z" ] && ln -sf "$z" "$SYSLIB/libz.so" && break
  done
  # The headers and link paths serve carseg's build alone (build() below), not Inductor's
  # own C++ compiles; the run-time path (libturbojpeg) serves every step.
  SYSROOT_BUILD_ENV=(CMAKE_PREFIX_PATH=/tmp/sysroot/usr CPATH=/tmp/sysroot/usr/include
                     LIBRARY_PATH=$SYSLIB)
  export LD_LIBRARY_PATH=$SYSLIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
# libstdc++: a library compiled here must link the shared one. The second run's builds (the
# bindings, AOTInductor's wrapper.so) each carried a static copy and crashed in Python beside
# torch's shared one (tests/cpp/test_stdcxx.py). CMake has its own guard
# (cmake/CarsegSharedStdcxx.cmake); Inductor's compiles get a libstdc++.so link to find, where
# the compiler has none, ahead of its libstdc++.a.
CXX_FOR_CHECK=${CXX:-g++}
STDCXX_LINK=$("$CXX_FOR_CHECK" -print-file-name=libstdc++.so 2>/dev/null)
STDCXX_SO=$("$CXX_FOR_CHECK" -print-file-name=libstdc++.so.6 2>/dev/null)
{
  echo "compiler: $("$CXX_FOR_CHECK" --version 2>&1 | head -1) ($(command -v "$CXX_FOR_CHECK"))"
  echo "libstdc++.so link: $STDCXX_LINK; libstdc++.so.6: $STDCXX_SO"
  echo "libstdc++.a: $("$CXX_FOR_CHECK" -print-file-name=libstdc++.a 2>/dev/null)"
  echo "CXX=${CXX:-} CXXFLAGS=${CXXFLAGS:-} LDFLAGS=${LDFLAGS:-} LIBRARY_PATH=${LIBRARY_PATH:-}"
} >> "$LOG" 2>&1
if [ ! -f "$STDCXX_LINK" ] && [ -f "$STDCXX_SO" ]; then
  mkdir -p /tmp/sysroot/stdcxx && ln -sf "$STDCXX_SO" /tmp/sysroot/stdcxx/libstdc++.so
  export LIBRARY_PATH=/tmp/sysroot/stdcxx${LIBRARY_PATH:+:$LIBRARY_PATH}
  echo "no libstdc++.so link: /tmp/sysroot/stdcxx/libstdc++.so -> $STDCXX_SO on LIBRARY_PATH" >> "$LOG"
fi
case " ${LDFLAGS:-} " in *-static-libstdc++*)
  export LDFLAGS=${LDFLAGS//-static-libstdc++/}
  echo "LDFLAGS asked for -static-libstdc++: dropped for this check" >> "$LOG" ;;
esac
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1  # no network there: no version check
step environment "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__,
  'cuda', torch.version.cuda, 'available', torch.cuda.is_available());
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
if [ "$DEVICE" = cuda ]; then nvidia-smi >> "$LOG" 2>&1; fi
# A native stack for a crash (segv_trace.c): preloaded into the steps that crashed before.
SEGV=$WORK/segv_trace.so
cc -shared -fPIC -O1 -o "$SEGV" benchmarks/gpu/segv_trace.c >> "$LOG" 2>&1 || SEGV=
with_trace() { LD_PRELOAD=${SEGV}${LD_PRELOAD:+:$LD_PRELOAD} PYTHONFAULTHANDLER=1 "$@"; }

# carseg against this torch: the C++ core, carseg_infer, the bindings and the GoogleTests.
build() {
  rm -f build/gpu-check/CMakeCache.txt  # a warm machine's earlier configure may be stale
  env "${SYSROOT_BUILD_ENV[@]}" "$PY" -m pip install --no-build-isolation --no-deps -e . \
    --config-settings=build-dir=build/gpu-check \
    --config-settings=cmake.define.CARSEG_BUILD_TESTS=ON
}
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  step build build || { echo "build failed: nothing else can run" | tee -a "$LOG"; exit 1; }
  BUILD=build/gpu-check
else
  BUILD=${BUILD:-build/py}
fi
# What the bindings link (a static libstdc++ copy crashed the second run), before any test.
step stdcxx "$PY" -m pytest -q -p no:cacheprovider tests/cpp/test_stdcxx.py
BIN=$(dirname "$(command -v "$PY")")
INFER=$(command -v carseg_infer || echo "$BIN/carseg_infer")
[ -x "$INFER" ] || INFER=$BUILD/cpp/carseg_infer
CARSEG=("$PY" -m carseg)

# ---------------------------------------------------------------------------- train, export
# 32 photos drawn (about 15 s), each linked under COPIES names: enough images for a steady
# rate at hundreds a second, every one decoded, inferred, encoded and written.
COPIES=16; [ "$QUICK" = 1 ] && COPIES=1
e2e_photos() {
  "${CARSEG[@]}" synth --out "$WORK/e2e" --num 32 --size 1280x1918 --seed 5 || return 1
  mkdir -p "$WORK/e2e_in"
  for i in $(seq "$COPIES"); do
    for f in "$WORK"/e2e/train/*.jpg; do ln -f "$f" "$WORK/e2e_in/${i}_$(basename "$f")"; done
  done
}
# Drawn in the background (CPU work) while the GPU trains; joined before the end-to-end runs.
step_in_background e2e_photos e2e_photos

# On CUDA 128 photos and 4 epochs (seconds there): a model good enough that fp16-against-fp32
# mask IoU measures fp16, not a half-trained model's coin flips; on the CPU 64 and 2.
NUM_DEFAULT=128; EPOCHS_DEFAULT=4
[ "$DEVICE" = cpu ] && NUM_DEFAULT=64 && EPOCHS_DEFAULT=2
NUM=${NUM:-$NUM_DEFAULT}; EPOCHS=${EPOCHS:-$EPOCHS_DEFAULT}
step data bash -c "${CARSEG[*]} synth --out $WORK/data --num $NUM --size 320x480 --seed 3 &&
  ${CARSEG[*]} prepare --datapath $WORK/data"
# 256 px; on CUDA the config's auto_engine picks GPUEngine(mixed_precision=fp16).
step train "${CARSEG[@]}" train --data "$WORK/data" --logdir "$WORK/logs" --epochs "$EPOCHS" \
  --image-size 256
# TorchScript and ONNX first (seconds); the AOTInductor package (a minute or more of compile,
# and a crash on the first GPU run) comes after the tests, in its own step.
step export_fp32 "$PY" -m export all --logdir "$WORK/logs" --out "$WORK/art32" --device "$DEVICE" \
  --formats torchscript,onnx
if [ "$DEVICE" = cuda ]; then
  step export_fp16 "$PY" -m export all --logdir "$WORK/logs" --out "$WORK/art16" \
    --device cuda --precision fp16 --formats torchscript,onnx
  ART16=$WORK/art16
else
  echo "=== export_fp16: skipped on the CPU (fp16 artifacts are for CUDA)" | tee -a "$LOG"
  ART16=
fi

# ---------------------------------------------------------------------------- speed
ITERS=200; WARMUP=20; BATCHES=1,64,256
[ "$QUICK" = 1 ] && ITERS=10 && WARMUP=2
[ "$DEVICE" = cpu ] && BATCHES=1,4  # the rehearsal: every code path, none of the sizes
if [ -n "$ART16" ]; then
  CPP_ART=$ART16; CPP_PREC=fp16
else
  CPP_ART=$WORK/art32; CPP_PREC=fp32
fi
# bench_sizes BACKEND: carseg_infer bench of the fp16 (CPU: fp32) folder at 256x256 (the
# batches) and 1280x1920 (batch 1), into WORK/bench_BACKEND_{256,1280x1920}.json.
bench_sizes() {
  local backend=$1
  "$INFER" bench --model "$CPP_ART" --backend "$backend" --device "$DEVICE" \
    --precision "$CPP_PREC" --size 256 --batch "$BATCHES" --iters "$ITERS" --warmup "$WARMUP" \
    --json "$WORK/bench_${backend}_256.json" &&
  "$INFER" bench --model "$CPP_ART" --backend "$backend" --device "$DEVICE" \
    --precision "$CPP_PREC" --size 1280x1920 --batch 1 --iters "$((ITERS / 4 + 3))" --warmup 2 \
    --json "$WORK/bench_${backend}_1280x1920.json"
}
# merge_json OUT KEY=FILE...: one JSON object of the files' contents under their keys
merge_json() {
  "$PY" -c "import json, sys; json.dump({k: json.load(open(f)) for k, f in
    (a.split('=', 1) for a in sys.argv[2:])}, open(sys.argv[1], 'w'), indent=1)" "$@"
}
bench_cpp() {
  bench_sizes auto &&
  "$INFER" bench --model "$WORK/art32" --device "$DEVICE" --size 256 --batch 1 \
    --iters "$ITERS" --warmup "$WARMUP" --json "$WORK/bench_256_fp32.json" &&
  merge_json "$OUT/bench_cpp.json" 256="$WORK/bench_auto_256.json" \
    1280x1920="$WORK/bench_auto_1280x1920.json" 256_fp32="$WORK/bench_256_fp32.json"
}
step bench_cpp bench_cpp

# End to end: full-size JPEGs to a mask PNG and a white JPEG cutout each, and the seed
# tutorial's way on the same photos. Cold start: process start to the first mask written.
e2e() {
  local photos=$WORK/e2e_in one=$WORK/one
  mkdir -p "$one" && cp "$(ls "$photos"/*.jpg | head -1)" "$one/"
  local t0 cold
  t0=$(now)
  "$INFER" infer --model "$CPP_ART" --device "$DEVICE" --precision "$CPP_PREC" --input "$one" \
    --output "$WORK/cold" --batch 1 || return 1
  cold=$(elapsed "$t0")
  "$INFER" infer --model "$CPP_ART" --device "$DEVICE" --precision "$CPP_PREC" \
    --input "$photos" --output "$WORK/e2e_out" --batch 16 --workers 6 \
    --report "$WORK/e2e_report.json" || return 1
  # The same with 14 workers a side: if the rate grows, decoding and encoding on the CPU bound
  # the run (the first run's 125 img/s came with 0.6 ms of model a photo).
  "$INFER" infer --model "$CPP_ART" --device "$DEVICE" --precision "$CPP_PREC" \
    --input "$photos" --output "$WORK/e2e_out14" --batch 16 --workers 14 \
    --report "$WORK/e2e_report14.json" || return 1
  # JPEGs decoded on the GPU by nvJPEG (new, never run on a GPU yet): a failure here is logged
  # and recorded in e2e.json, and does not fail the step.
  rm -f "$WORK/e2e_report_nvjpeg.json"
  if [ "$DEVICE" != cpu ]; then
    "$INFER" infer --model "$CPP_ART" --device "$DEVICE" --precision "$CPP_PREC" \
      --input "$photos" --output "$WORK/e2e_out_nvjpeg" --batch 16 --workers 14 --decode gpu \
      --report "$WORK/e2e_report_nvjpeg.json" || echo "e2e --decode gpu: exit $?"
  fi
  "$PY" - "$WORK" "$photos" "$cold" "$OUT/e2e.json" "$DEVICE" <<'PY'
import json, sys, time
from pathlib import Path

work, photos, cold, out, device = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), \
    sys.argv[4], sys.argv[5]
rep = json.loads((work / "e2e_report.json").read_text())
rep14 = json.loads((work / "e2e_report14.json").read_text())
nv_file = work / "e2e_report_nvjpeg.json"
nv = json.loads(nv_file.read_text()) if nv_file.is_file() else {"error": "not run or no report"}
from benchmarks import seed_script  # the seed tutorial's way: cv2, albumentations, eager torch


def decoder_ious():
    """The trained model's masks from nvJPEG's pixels against libjpeg-turbo's (the 14-worker
    run), one per distinct photo: what decoding on the GPU changes for a user."""
    import numpy as np
    from PIL import Image

    out = []
    for cpu in sorted((work / "e2e_out14").glob("1_*_mask.png")):
        gpu = work / "e2e_out_nvjpeg" / cpu.name
        if gpu.is_file():
            a, b = (np.asarray(Image.open(p)) > 0 for p in (cpu, gpu))
            out.append(float((a & b).sum() / max(1, (a | b).sum())))
    return {"photos": len(out), "min": min(out), "mean": sum(out) / len(out)} if out else None

files = sorted(photos.glob("*.jpg"))[:64]  # the seed's way is slow: 64 photos tell its rate
seed = seed_script.run(work / "art32", files, work / "seed_out", device=device)
json.dump({"images": rep["succeeded"], "carseg_infer_images_per_s": rep["images_per_second"],
           "seconds": rep["seconds"], "stages": rep.get("stages"),
           "workers_14": {k: rep14.get(k) for k in ("images_per_second", "seconds", "stages")},
           "nvjpeg_14": {k: nv.get(k) for k in ("images_per_second", "seconds", "stages",
                                                 "succeeded", "failed", "error", "decode")}
                        | {"mask_iou_against_cpu_decoding": decoder_ious()},
           "seed_script": seed, "cold_start_s": cold, "device": device,
           "photo_size": "1918x1280"}, open(out, "w"), indent=1)
print(open(out).read())
PY
}
step_join e2e_photos
step e2e e2e

# The same model through every Python backend, the anchors among them (eager fp32,
# torch.compile + CUDA graphs fp16), in this run; batches 1 and the largest only. Timed before
# the tests, with nothing else running.
OPTIONAL=1 step bench_py "$PY" -m benchmarks --artifacts "$WORK/art32" --device "$DEVICE" \
  --sizes 256 --batches "1,${BATCHES##*,}" --iters "$((ITERS / 2))" --out "$WORK/bench_py"
cp "$WORK/bench_py/results.json" "$OUT/bench_py.json" 2>/dev/null

# ---------------------------------------------------------------------------- tests
# The AOTInductor package (a minute or more of CPU-bound compile, and a crash in its load on
# both GPU runs so far) compiles in the background while the tests run: for this device and
# precision, in a child process, with a native stack on a crash. Its log joins log.txt after.
OPTIONAL=1 step_in_background aoti with_trace "$PY" -m export aoti --logdir "$WORK/logs" \
  --out "$CPP_ART" --device "$DEVICE" --precision "$CPP_PREC"

# ctest of the CMake that configured the build (pip's, beside the Python), not an older one
CTEST=$BIN/ctest; [ -x "$CTEST" ] || CTEST=ctest
OPTIONAL=1 step ctest "$CTEST" --test-dir "$BUILD" --output-on-failure -j4 -R "Cuda|Pipeline|Predictor"
# pytest -m gpu, each test's result printed as it ends (-v). A crash ends the process: the test
# that was running is named, the tests not yet run run again without it (3 crashes at most).
pytest_gpu() {
  local out=$WORK/pytest_gpu.txt rc=0 round crashed nodeid crashed_once=0
  local -a skip=()
  for round in 1 2 3 4; do
    with_trace "$PY" -m pytest -v -p no:cacheprovider -m gpu tests "${skip[@]}" > "$out" 2>&1
    rc=$?
    cat "$out"
    [ "$rc" -ge 128 ] || break
    crashed=$(grep -oE '^tests/[^ ]+::[^ ]+' "$out" | tail -1)
    echo "pytest: crashed (exit $rc) in ${crashed:-an unknown test}; the rest run again without it"
    crashed_once=1
    [ -n "$crashed" ] || break
    skip+=(--deselect "$crashed")
    while read -r nodeid; do skip+=(--deselect "$nodeid"); done < <(
      grep -oE '^tests/[^ ]+::[^ ]+ (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)' "$out" | cut -d' ' -f1)
  done
  [ "$crashed_once" = 1 ] && return 139
  return "$rc"
}
OPTIONAL=1 step pytest_gpu pytest_gpu

step_join aoti && AOTI_OK=1
# Timed in C++ once the tests are done (nothing else running).
aoti_bench() {
  bench_sizes aoti &&
  merge_json "$WORK/bench_cpp_aoti.json" 256="$WORK/bench_aoti_256.json" \
    1280x1920="$WORK/bench_aoti_1280x1920.json"
}
[ "${AOTI_OK:-0}" = 1 ] && OPTIONAL=1 step bench_cpp_aoti aoti_bench


# Where the end-to-end run's time goes on the GPU (the target furthest off), where the image
# has Nsight Systems: 128 of the photos, JPEGs decoded on the GPU; the kernel, copy and API
# summaries go to log.txt.
profile() {
  command -v nsys > /dev/null || { echo "no nsys on this image"; return 0; }
  mkdir -p "$WORK/prof_in"
  ls "$WORK"/e2e_in/*.jpg | head -128 | while read -r f; do ln -f "$f" "$WORK/prof_in/"; done
  nsys profile -o "$WORK/prof" --force-overwrite true --stats=true -t cuda,nvtx,osrt \
    "$INFER" infer --model "$CPP_ART" --device "$DEVICE" --precision "$CPP_PREC" \
    --input "$WORK/prof_in" --output "$WORK/prof_out" --batch 16 --workers 14 --decode gpu
}
[ "$DEVICE" = cuda ] && OPTIONAL=1 step profile profile

# ---------------------------------------------------------------------------- the results
step summary "$PY" benchmarks/gpu/summarize.py "$OUT" "$WORK"
tar -czf "$OUT/details.tar.gz" -C "$WORK" --exclude='*.jpg' --exclude='*.gif' --exclude='*.png' \
  --exclude='*.pt' --exclude='*.pt2' --exclude='*.onnx' --exclude='*.pth' --exclude='*.nsys-rep' --exclude='*.sqlite' --exclude='data' \
  --exclude='e2e' . 2>> "$LOG"
column -t -s $'\t' "$STEPS" 2>/dev/null || cat "$STEPS"
[ -f "$OUT/summary.md" ] && cat "$OUT/summary.md"
ls -la "$OUT"
