#!/usr/bin/env bash
# Rebuild the demo checkpoints as committed (see models/MODEL_CARD.md): generate the dataset,
# train DeconvNet (stages 1, 2) and FCN (32s -> 16s -> 8s) with jobs/train.py on a local Ray,
# copy the final models here, evaluate them on the demo val split and on the held-out split.
# Usage: make demo-models   (about 75 minutes on 2 CPU cores; rerun the same command to resume)
set -euo pipefail
PY=${PY:-.venv/bin/python}
WORK=${WORK:-build/demo-models}
HERE=models/demo
COMMON=(--width 0.0625 --num-workers 2 --cpus-per-worker 0.5 --data-cpus 0.5 --bn-batches 20
        --checkpoint-every 500 --log-every 50 --lr-schedule poly)

[ -f "$WORK/voc/ImageSets/Segmentation/val.txt" ] || $PY -m pipeline.demo.synthvoc "$WORK/voc" --preset demo
[ -f "$WORK/heldout/ImageSets/Segmentation/val.txt" ] || $PY -m pipeline.demo.synthvoc "$WORK/heldout" --preset heldout
# DeconvNet stage 1 (instance crops), then stage 2 (proposal crops) from stage 1's model.
$PY jobs/train.py --data "$WORK/voc" --output "$WORK/deconvnet" --model deconvnet --stages 1 \
    --iterations 4000 --batch-size 8 --global-batch 16 --lr 0.1 "${COMMON[@]}"
$PY jobs/train.py --data "$WORK/voc" --output "$WORK/deconvnet" --model deconvnet --stages 2 \
    --init-from "$WORK/deconvnet/deconvnet-stage1.safetensors" \
    --iterations 3000 --batch-size 8 --global-batch 16 --lr 0.01 "${COMMON[@]}"
$PY jobs/train.py --data "$WORK/voc" --output "$WORK/fcn" --model fcn --stages 32,16,8 \
    --iterations 2000,1000,1000 --fcn-size 256 --batch-size 4 --global-batch 8 --lr 0.01 "${COMMON[@]}"
cp "$WORK/deconvnet/deconvnet-stage2.safetensors" "$HERE/deconvnet.safetensors"
cp "$WORK/fcn/fcn8s.safetensors" "$HERE/fcn8s.safetensors"
for split in voc heldout; do
  $PY jobs/evaluate.py --data "$WORK/$split" --split val --checkpoint "$HERE/deconvnet.safetensors" \
      --fcn-checkpoint "$HERE/fcn8s.safetensors" --output "$WORK/report-$split"
done
