#!/usr/bin/env bash
# The full training run on a machine with an NVIDIA GPU and PyTorch but no Node.js and no internet (how the
# committed models/demo was trained): unpacks .devbundle/ (scripts/gpu-bundle.sh: Node, the packages, the
# compiled app), generates the training split in parallel shards with the runtime's own generator and
# prepare.mjs, then trains with --device cuda for a fixed wall time (--fit-minutes picks the step count).
# The published files land in OUT (8 files); everything else stays in WORK.
#
#   bash models/demo/train/gpu.sh OUT [MINUTES] [SHARDS] [IMAGES_PER_SHARD]
#
# Seeds: training shards use seeds 1..SHARDS, the held-out loss seed 999; `minigpt eval` uses seed 1000.
# A second call on the same machine reuses the prepared shards in WORK.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${1:?usage: gpu.sh OUT [MINUTES] [SHARDS] [IMAGES_PER_SHARD]}
MINUTES=${2:-7}
SHARDS=${3:-16}
PER_SHARD=${4:-1200}
WORK=${WORK:-/tmp/demo-train}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
IMAGE_SIZE=${IMAGE_SIZE:-112}  # a multiple of 14 with a patch count divisible by 4 (112: 16 image tokens, 224: 64)  # DEVICE=cpu tries the script on a machine without a GPU
mkdir -p "$WORK/bin" "$OUT"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

NODE=$(command -v node || true)
if [ -z "$NODE" ]; then
  NODE=$WORK/bin/node
  [ -x "$NODE" ] || { xz -dc .devbundle/node.xz > "$NODE"; chmod +x "$NODE"; }
fi
[ -d node_modules ] || tar -xJf .devbundle/node_modules.tar.xz
[ -d dist ] || tar -xJf .devbundle/dist.tar.xz
stamp "node $("$NODE" --version), $(nproc) cores; $("$PY" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")')"

shard() {  # seed count dir
  [ -f "$3/prep/meta.json" ] && grep -q "\"imageSize\": $IMAGE_SIZE," "$3/prep/meta.json" && return 0
  "$NODE" bin/minigpt.js demo-data --seed "$1" --count "$2" --out "$3/split" > "$3.log" 2>&1 &&
    "$NODE" models/demo/train/prepare.mjs --data "$3/split" --out "$3/prep" --image-size "$IMAGE_SIZE" >> "$3.log" 2>&1 &&
    rm -rf "$3/split"
}
pids=()
for s in $(seq 1 "$SHARDS"); do shard "$s" "$PER_SHARD" "$WORK/shard$s" & pids+=($!); done
shard 999 256 "$WORK/val" & pids+=($!)
for p in "${pids[@]}"; do wait "$p" || { cat "$WORK"/*.log; exit 1; }; done
data=$(for s in $(seq 1 "$SHARDS"); do printf '%s,' "$WORK/shard$s/prep"; done)
stamp "data: $SHARDS shards x $PER_SHARD images prepared"

# 64 images x 4 samples per step (8x the CPU recipe's batch, lr scaled by ~sqrt(8)), micro-batches of 128;
# the vision encoder's auxiliary loss and smooth grid-token embeddings (README: "What the first GPU run taught").
"$PY" models/demo/train/train.py --data "$data" --val "$WORK/val/prep" --out "$OUT" --state "$WORK/state.pt" \
  --device "$DEVICE" --fit-minutes "$MINUTES" --max-minutes "$(awk "BEGIN { print $MINUTES + 1 }")" \
  --batch-images 64 --per-image 4 --micro 128 --lr 2e-3 --warmup 400 --log-every 100 --save-every 1000 \
  --aux-weight 1 --coord-init
stamp "trained"
ls -la "$OUT" "$OUT/llama"
