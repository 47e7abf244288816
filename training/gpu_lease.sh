#!/usr/bin/env bash
# What one 15-minute GPU lease runs (device tool; the results are in docs/model-card.md).
#
# Prepared on CPU beforehand, in the git-ignored folder .gpu/ that the lease carries:
#   python -m training.data --out .gpu/streams     # train/dev streams (the GPU machine has no corpus)
#   pip download ... -d .gpu/whl constriction zstandard brotli   # what the GPU image lacks (cp312)
#   lmarc add -a .gpu/check.lma .gpu/check          # an archive made on CPU, its files kept beside it
# Two jobs at once: (1) train the default model's shape from scratch in bf16 for a fixed time budget;
# (2) meanwhile decode the CPU-made archive on CUDA and compare every byte (issue #2's cross-device
# check). Everything worth keeping is copied to $OUT, which comes back.
# A CPU smoke test: OUT=/tmp/lo SKIP_WHEELS=1 DEVICE=cpu TIME_BUDGET=20 bash training/gpu_lease.sh
# Second lease call (training only, shorter): SKIP_CHECK=1 TIME_BUDGET=225 TRAIN_TIMEOUT=260
# With the BPE text vocabulary (issue 4): TOKENIZER=training/tokenizer.json (and INIT=DIR to start from a
# checkpoint the lease carries); the tokenizer travels with the checkpoint into `training.export --tokenizer`.
set -u
export PYTHONUNBUFFERED=1
REPO=$PWD
OUT=${OUT:-/tmp/lease-out}
DEVICE=${DEVICE:-cuda}
SITE=/tmp/site
mkdir -p "$OUT" $SITE
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/train.log" 2>&1
[ -n "${SKIP_WHEELS:-}" ] ||
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $SITE .gpu/whl/*.whl
# lmarc runs from this tree; only its entry points (how the built-in plugins load) need metadata
ln -sfn "$REPO/plugins" $SITE/lmarc_plugins
python3 training/entry_points.py $SITE

timeout "${TRAIN_TIMEOUT:-520}" python3 -m training.train --streams .gpu/streams --out /tmp/run --device "$DEVICE" \
  --bf16 --batch 128 --seq 1024 --lr 3e-3 --warmup 200 --steps 1000000 --time-budget "${TIME_BUDGET:-420}" \
  --eval-every 500 --ckpt-every 500 --eval-windows 32 --threads 8 ${TOKENIZER:+--tokenizer "$TOKENIZER"} \
  ${INIT:+--init "$INIT"} >>"$OUT/train.log" 2>&1 &
train_pid=$!

[ -n "${SKIP_CHECK:-}" ] || (
  cd /tmp && export PYTHONPATH=$SITE:$REPO
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
  python3 -m archiver.cli info
  for dev in $DEVICE cpu; do
    rm -rf "/tmp/x-$dev"
    start=$(date +%s%N)
    python3 -m archiver.cli --device "$dev" --no-progress extract "$REPO/.gpu/check.lma" -C "/tmp/x-$dev" &&
      echo "$dev extract: $((($(date +%s%N) - start) / 1000000)) ms (training shares the machine)" &&
      diff -r "$REPO/.gpu/check" "/tmp/x-$dev/.gpu/check" && echo "$dev: every byte matches the originals"
  done
  python3 -m archiver.cli --device "$DEVICE" --no-progress test "$REPO/.gpu/check.lma" && echo "$DEVICE test: ok"
) >"$OUT/cuda_check.log" 2>&1

wait $train_pid
echo "training exit status $?" >>"$OUT/train.log"
for d in /tmp/run/final /tmp/run/ckpt; do  # the final model, else the last checkpoint
  if [ -f "$d/model.safetensors" ]; then cp "$d/model.safetensors" "$d/config.json" "$OUT/"; break; fi
done
cp /tmp/run/evals.jsonl /tmp/run/metrics.json "$OUT/" 2>/dev/null
ls -la "$OUT"
