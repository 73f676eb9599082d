#!/usr/bin/env bash
# Smoke test of the training recipe: a tiny split, a few training steps, the published files converted by
# `minigpt convert`, and the ONNX package checked against PyTorch on the same inputs (check.py / check.mjs).
# Needs: npm run build, and Debian's python3-torch + libopenblas0-pthread (see README.md).
#
#   bash models/demo/train/smoke.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PYTHON:-/usr/bin/python3}
WORK=${1:-$(mktemp -d /tmp/minigpt-train-smoke.XXXXXX)}
mkdir -p "$WORK"
t0=$(date +%s)
node bin/minigpt.js demo-data --seed 1 --count 8 --out "$WORK/split"
node models/demo/train/prepare.mjs --data "$WORK/split" --out "$WORK/prepared"
nice -n 19 "$PY" models/demo/train/train.py --data "$WORK/prepared" --out "$WORK/run" --steps 3 --batch-images 4 --per-image 4 --warmup 2 --log-every 1 \
  --aux-weight 1 --coord-init --pos-init-scale 4 --vit-steps 2 --vit-batch 4
node bin/minigpt.js convert --arch minigpt-v2 --vit "$WORK/run/eva_vit.pth" --llm "$WORK/run/llama" --ckpt "$WORK/run/minigptv2_ckpt.pth" \
  --vit-heads 4 --image-size 112 --lora-alpha 16 --out "$WORK/package"
nice -n 19 "$PY" models/demo/train/check.py --run "$WORK/run" --data "$WORK/prepared" --samples 0,5,9 --out "$WORK/expected.json"
node models/demo/train/check.mjs --model "$WORK/package" --data "$WORK/prepared" --expected "$WORK/expected.json" > "$WORK/check.json"
node -e 'const r = require(process.argv[1]); for (const s of r.samples) console.log(`sample ${s.sample}: image_embeds ${s.image_embeds_max_abs_err.toExponential(2)}, logits ${s.first_logits_max_abs_err.toExponential(2)}, greedy ids ${s.ok ? "equal" : "DIFFER"}`); if (!r.ok) process.exit(1)' "$WORK/check.json"
node bin/minigpt.js eval --model "$WORK/package" --data "$WORK/split" --task refer --limit 4 --provider cpu
echo "smoke test passed in $(( $(date +%s) - t0 )) s ($WORK)"
