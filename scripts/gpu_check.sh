#!/usr/bin/env bash
# The GPU check (issue 19): everything CUDA-specific that the CPU machines cannot exercise, in one run under
# 10 minutes, every output under one folder.
#
#   bash scripts/gpu_check.sh              # on a machine with a CUDA GPU; writes $OUT (default gpu_check/<date>)
#   bash scripts/gpu_check.sh --dry-run    # here, without a GPU: the same steps on CPU at smoke sizes (~5 min)
#
# Steps (each time-limited; a failing step is recorded and the next one runs; exit status = number of failures):
#   1. environment: reuse .venv when its torch sees the GPU, else a venv over the system's torch
#      (--system-site-packages) with this package installed editable (no build isolation: works offline);
#      pointnet2_ops if pip can get it (optional)
#   2. the CUDA-marked tests (tests/test_cuda.py) and the CUDA tests of the ops (test_ops, test_chamfer)
#   3. a one-process torchrun of tools/train.py (nccl on CUDA, gloo in --dry-run)
#   4. Adapter-X and full fine-tuning of the shared small backbone on the shared ModelNet40, --amp auto, a few
#      dozen steps each
#   5. tools/benchmark.py on the GPU (CUDA-event timing): train, amp, inference, smoa sections
# Data and weights: $DATA (default <repo>/../shared/data/modelnet40_ply_hdf5_1024, else <repo>/shared/...) and
# $WEIGHTS (default .../shared/weights/point_mae_small_mn40.pth).
set -u

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
# time limits below are for a GPU machine; a busy CPU in --dry-run gets them scaled (LIMIT_SCALE, default 4 there)
LIMIT_SCALE="${LIMIT_SCALE:-$([ $DRY -eq 1 ] && echo 4 || echo 1)}"
OUT="${OUT:-$REPO/gpu_check/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
FAILS=0
T0=$(date +%s)

pick() {  # first existing path among the arguments
  for p in "$@"; do [ -e "$p" ] && { echo "$p"; return; }; done
  echo "$1"
}
DATA="${DATA:-$(pick "$REPO/../shared/data/modelnet40_ply_hdf5_1024" "$REPO/shared/data/modelnet40_ply_hdf5_1024")}"
WEIGHTS="${WEIGHTS:-$(pick "$REPO/../shared/weights/point_mae_small_mn40.pth" "$REPO/shared/weights/point_mae_small_mn40.pth")}"

step() {  # step NAME TIMEOUT_S COMMAND...: run, log to $OUT/NAME.log, record status and seconds
  local name="$1" limit=$(( $2 * LIMIT_SCALE )); shift 2
  local t=$(date +%s)
  echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/$name.log"
  timeout --signal=TERM --kill-after=20 "$limit" "$@" >> "$OUT/$name.log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t ))
  if [ $rc -eq 0 ]; then echo "ok     $name (${dt}s)" | tee -a "$SUMMARY"
  else echo "FAILED $name (exit $rc, ${dt}s; see $name.log)" | tee -a "$SUMMARY"; FAILS=$((FAILS + 1)); fi
  return 0
}

# -- 1. environment ------------------------------------------------------------------------------------------------
PY="$REPO/.venv/bin/python"
if [ $DRY -eq 1 ]; then
  DEVICE=cpu
  [ -x "$PY" ] || PY=python3
else
  DEVICE=cuda
  if ! { [ -x "$PY" ] && "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; }; then
    VENV="$OUT/venv"
    SYS_PY="$(command -v python3)"
    {
      echo "no usable .venv with CUDA: creating $VENV over $SYS_PY's site-packages"
      "$SYS_PY" -m venv --system-site-packages "$VENV"
      "$VENV/bin/python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" ||
        "$VENV/bin/python" -m pip install "torch==2.14.1" "torchvision==0.29.1"
      "$VENV/bin/python" -m pip install --no-build-isolation --no-deps -e . ||
        "$VENV/bin/python" -m pip install -e .
      # the package's own dependencies, where pip can reach an index or a cache (skipped offline when present)
      "$VENV/bin/python" -m pip install "timm>=1.0.15" h5py pyyaml safetensors tqdm tensorboard matplotlib \
        "fpsample>=1.0.2" "numba>=0.60" scikit-learn pytest pytest-timeout || true
    } > "$OUT/setup.log" 2>&1
    PY="$VENV/bin/python"
  fi
  "$PY" -m pip install pointnet2_ops >> "$OUT/setup.log" 2>&1 || echo "pointnet2_ops not installed (optional)" >> "$OUT/setup.log"
fi
{
  echo "repo: $REPO ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null))"
  echo "python: $PY; device: $DEVICE; data: $DATA; weights: $WEIGHTS"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'); print('bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported())"
  "$PY" -c "import importlib.util as u; print('pointnet2_ops importable:', u.find_spec('pointnet2_ops') is not None)"
  command -v nvidia-smi >/dev/null && nvidia-smi
} > "$OUT/environment.txt" 2>&1
if ! "$PY" -c "import pointpeft, benchmarks" 2>> "$OUT/environment.txt"; then
  echo "FAILED environment (pointpeft not importable; see environment.txt, setup.log)" | tee -a "$SUMMARY"
  exit 1
fi
echo "ok     environment ($PY)" | tee -a "$SUMMARY"

# -- 2. CUDA tests ---------------------------------------------------------------------------------------------------
step cuda_tests 240 "$PY" -m pytest -q -p no:cacheprovider -rs --junitxml "$OUT/cuda_tests.xml" \
  tests/test_cuda.py "tests/test_ops.py::test_fps_cuda_backends" "tests/test_chamfer.py::test_chamfer_cuda_matches_cpu"

# -- 3. one-process torchrun (nccl on CUDA) -------------------------------------------------------------------------
TINY=(model.type=point_mae_tiny data.train.num_samples=48 data.val.num_samples=24 data.batch_size=8
      train.max_steps_per_epoch=3 train.epochs=1 train.progress=off "train.device=$DEVICE")
step torchrun_1proc 180 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 tools/train.py \
  --config cfgs/finetune/synthetic/adapterx.yaml --run-dir "$OUT/runs/torchrun" --amp auto "${TINY[@]}"
grep -h "process group" "$OUT/torchrun_1proc.log" >> "$SUMMARY" 2>/dev/null

# -- 4. short fine-tuning on the real ModelNet40, --amp auto ----------------------------------------------------------
if [ -d "$DATA" ] && [ -f "$WEIGHTS" ]; then
  if [ $DRY -eq 1 ]; then STEPS=2; VAL_PER_CLASS=1; else STEPS=60; VAL_PER_CLASS=10; fi
  MN40=(model.type=point_mae_small "data.train.root=$DATA"
        "data.val={type: subset, per_class: $VAL_PER_CLASS, seed: 0, dataset: {type: modelnet40, root: $DATA, split: test, npoints: 1024}}"
        train.epochs=1 "train.max_steps_per_epoch=$STEPS" scheduler.warmup_epochs=0 train.progress=off
        "train.device=$DEVICE")
  for method in adapterx full; do
    step "finetune_$method" 240 "$PY" tools/train.py --config "cfgs/finetune/modelnet40/$method.yaml" \
      --ckpt "$WEIGHTS" --run-dir "$OUT/runs/$method" --amp auto "${MN40[@]}"
    grep -h "amp\|val_acc\|accuracy" "$OUT/finetune_$method.log" | tail -3 >> "$SUMMARY" 2>/dev/null
  done
else
  echo "skipped finetune (no $DATA or $WEIGHTS)" | tee -a "$SUMMARY"
fi

# -- 5. benchmark on the GPU (CUDA events) ----------------------------------------------------------------------------
if [ $DRY -eq 1 ]; then
  step benchmark 300 "$PY" tools/benchmark.py --smoke --sections train,inference,smoa --device cpu \
    --out "$OUT/benchmark.json" --markdown "$OUT/benchmark.md"
else
  step benchmark 330 "$PY" tools/benchmark.py --quick --device cuda --sections train,amp,inference,smoa \
    --models point_mae_small,point_mae --methods full,adapterx,lora --rounds 5 \
    --out "$OUT/benchmark.json" --markdown "$OUT/benchmark.md"
fi

echo "total $(( $(date +%s) - T0 ))s, $FAILS failed step(s); outputs in $OUT" | tee -a "$SUMMARY"
exit $FAILS
