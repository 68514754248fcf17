#!/usr/bin/env bash
# Rebuild the demo checkpoints exactly as committed (see models/MODEL_CARD.md):
# generate the dataset, train DeconvNet (stages 1, 2) and FCN (32s -> 16s -> 8s) with
# jobs/train.py on a local Ray, copy the final models here, evaluate them on the val split.
# Usage: make demo-models   (about 45 minutes on 2 CPU cores)
set -euo pipefail
PY=${PY:-.venv/bin/python}
WORK=${WORK:-build/demo-models}
HERE=models/demo
COMMON=(--width 0.0625 --num-workers 2 --cpus-per-worker 0.5 --data-cpus 0.5 --bn-batches 20
        --checkpoint-every 200 --log-every 20 --lr-schedule step)

$PY -m pipeline.synthvoc "$WORK/voc" --preset demo
# DeconvNet stage 1, then stage 2 from stage 1's model (--init-from: each command has its own lr).
$PY jobs/train.py --data "$WORK/voc" --output "$WORK/deconvnet" --model deconvnet --stages 1 \
    --iterations 1000 --batch-size 8 --global-batch 16 --lr 0.1 --lr-step 750 "${COMMON[@]}"
$PY jobs/train.py --data "$WORK/voc" --output "$WORK/deconvnet" --model deconvnet --stages 2 \
    --init-from "$WORK/deconvnet/deconvnet-stage1.safetensors" \
    --iterations 400 --batch-size 8 --global-batch 16 --lr 0.01 --lr-step 300 "${COMMON[@]}"
$PY jobs/train.py --data "$WORK/voc" --output "$WORK/fcn" --model fcn --stages 32,16,8 \
    --iterations 500,250,250 --fcn-size 256 --batch-size 4 --global-batch 8 --lr 0.01 --lr-step 400 "${COMMON[@]}"
cp "$WORK/deconvnet/deconvnet-stage2.safetensors" "$HERE/deconvnet.safetensors"
cp "$WORK/fcn/fcn8s.safetensors" "$HERE/fcn8s.safetensors"
$PY jobs/evaluate.py --data "$WORK/voc" --split val --checkpoint "$HERE/deconvnet.safetensors" \
    --fcn-checkpoint "$HERE/fcn8s.safetensors" --output "$WORK/report"
