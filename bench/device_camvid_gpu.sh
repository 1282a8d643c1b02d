#!/bin/bash
# The CamVid GPU recipe (configs/exp/camvid_lite2_gpu.yaml) on the device machine, in one call: the
# three leave-one-sequence-out folds trained side by side on one GPU, OOF inference with the
# test-matched CV, tune's class biases, then the CUDA tests. Reads CamVid from .device-data/camvid
# (train/, val/, test.json; git-ignored, carried) and the Python packages the device lacks from .whl/
# (carried). The test images stay behind (the 64 MiB limit): infer predicts copies of a training
# frame under the test file names, so the test-matched CV weights are right and the test
# predictions are meaningless (no submission is made). Results: $OUT/camvid_gpu.tar.gz and logs.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt"
python3 -c "import torch, timm, segmentation_models_pytorch as smp, albumentations as A; print('torch', torch.__version__, 'timm', timm.__version__, 'smp', smp.__version__, 'albumentations', A.__version__)" | tee -a "$OUT/gpu.txt"
python3 - <<'PY'
import json, shutil
from pathlib import Path
root = Path(".device-data/camvid")
frame = next((root / "train/images").glob("*.jpg"))
for rec in json.loads((root / "test.json").read_text())["images"]:
    dst = root / rec["file_name"]
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(frame, dst)
PY
mkdir -p outputs
A="data=camvid exp=camvid_lite2_gpu data.root=.device-data/camvid runtime.progress=false"
S=${SECONDS}
python3 -m pipeline folds $A > "$OUT/recipe.log" 2>&1
for f in 0 1 2; do timeout 380 python3 -m pipeline train $A fold=$f > "$OUT/train_fold$f.log" 2>&1 & done
wait; echo "three folds side by side: $((SECONDS-S)) s" >> "$OUT/recipe.log"
python3 -m pipeline infer $A >> "$OUT/recipe.log" 2>&1; echo "after infer: $((SECONDS-S)) s" >> "$OUT/recipe.log"
python3 -m pipeline tune $A >> "$OUT/recipe.log" 2>&1; echo "after tune: $((SECONDS-S)) s" >> "$OUT/recipe.log"
tar czf "$OUT/camvid_gpu.tar.gz" --exclude='*.pt' --exclude='*.npy' --exclude='*.npz' --exclude='*.png' outputs
tail -n 5 "$OUT"/train_fold*.log >> "$OUT/recipe.log"
# the CUDA tests (AMP x architectures, channels_last) in what is left of a 560 s call
S=${SECONDS}; LEFT=$((560 - SECONDS)); [ $LEFT -gt 30 ] || LEFT=30
timeout $LEFT python3 -m pytest -m gpu tests -q -p no:cacheprovider > "$OUT/gpu_tests.log" 2>&1; echo "gpu tests rc=$? in $((SECONDS-S)) s" | tee -a "$OUT/gpu_tests.log"
