#!/usr/bin/env bash
# The full training run on a machine with an NVIDIA GPU and PyTorch but no Node.js and no internet (the
# project's lent H100/H200; README.md "On a GPU machine"). It unpacks .devbundle/ (scripts/gpu-bundle.sh:
# Node, the packages, the compiled app), generates the split in parallel shards with the runtime's own
# generator and prepare.mjs, runs stage 1 once per image size (STAGE1), trains every run of RUNS at the same
# time on the one GPU (one run alone is bound by kernel launches; four at once kept an H200 at 99-100% and
# took 105 GB of its memory, so an 80 GB H100 wants fewer or smaller runs), converts each run's published
# files with `minigpt convert`, evaluates each package on a held-out split with `minigpt eval`, and copies
# the two best runs to OUT (the device tool brings back at most 8 files):
#   OUT/<run>/{eva_vit.pth,minigptv2_ckpt.pth,pytorch_model.bin}   the large published files
#   OUT/meta.tar.xz   per run: train_args.json, train_log.jsonl, llama/{config,generation_config,tokenizer}.json,
#                     the eval reports, the logs; and sweep.json (the scores)
#
#   bash models/demo/train/gpu.sh OUT [MINUTES] [SHARDS] [IMAGES_PER_SHARD]
#   RUNS=file   one run per line: NAME IMAGE_SIZE [train.py options...] (default: gpu-runs.txt beside this);
#               `--init-from @NAME` starts from run NAME of an earlier call on this machine (gpu-continue.txt);
#               `--init-from @package` from the committed models/demo (from_package.py; its .onnx.data files must
#               be there): a fine-tune, e.g. onto another SHAPES with a stage 1 of its own (gpu-finetune.txt)
#   DEVICE=cpu  tries the script on a machine without a GPU
#   VIT_MINUTES stage 1 (the ViT alone on the auxiliary task), before the MINUTES of the whole model (default 1)
#   STAGE1=shared (default): one stage 1 per image size, loaded by every run; per-run: each run its own
#   STAGE1_OPTS train.py options of the shared stage 1 (e.g. --vit-augment)
#   VIT_BATCH   images per stage-1 step (default 256; a CPU try wants ~8: four runs at 256 exhaust 24 GB)
#   VAL_IMAGES, HELDOUT_IMAGES, EVAL_ITEMS   the held-out splits' sizes (256, 300) and the items evaluated per task (300)
#   SHAPES      the generator's shape set for every split (aspect-safe, the default, as the generator's; classic:
#               `minigpt demo-data --help`);
#               WORK holds the splits of one set only
#   STOP_AFTER=data  stops once Node is unpacked and the splits are prepared: the device tool carries 64 MiB, less
#               than .devbundle/ and a package's .onnx.data together, so a fine-tune of the package takes two
#               calls on one warm machine: this one with .devbundle/ and without the .onnx.data, then the run
#               (train README, "On the lent GPU in two calls")
#
# Seeds: training shards 1..SHARDS, held-out loss 999, held-out evaluation 1000 (never used in training).
# A second call on the same machine reuses the prepared shards in WORK.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${1:?usage: gpu.sh OUT [MINUTES] [SHARDS] [IMAGES_PER_SHARD]}
MINUTES=${2:-7}
SHARDS=${3:-16}
PER_SHARD=${4:-1500}
RUNS=${RUNS:-models/demo/train/gpu-runs.txt}
WORK=${WORK:-/tmp/demo-train}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
EVAL_ITEMS=${EVAL_ITEMS:-300}
VAL_IMAGES=${VAL_IMAGES:-256}
HELDOUT_IMAGES=${HELDOUT_IMAGES:-300}
VIT_MINUTES=${VIT_MINUTES:-1}
STAGE1=${STAGE1:-shared}
STAGE1_OPTS=${STAGE1_OPTS:-}
VIT_BATCH=${VIT_BATCH:-256}
SHAPES=${SHAPES:-aspect-safe}
mkdir -p "$WORK/bin" "$OUT"
if [ -f "$WORK/shapes" ] && [ "$(cat "$WORK/shapes")" != "$SHAPES" ]; then
  echo "gpu.sh: $WORK holds splits of shape set $(cat "$WORK/shapes"), not $SHAPES: use another WORK" >&2
  exit 2
fi
echo "$SHAPES" > "$WORK/shapes"
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

mapfile -t runs < <(grep -v '^\s*\(#\|$\)' "$RUNS")
sizes=$(for r in "${runs[@]}"; do read -r _ size _ <<< "$r"; echo "$size"; done | sort -u)

# --- data: each shard generated once, prepared at every image size a run asks for
shard() {  # seed count dir
  local missing=0
  for size in $sizes; do [ -f "$3/prep$size/meta.json" ] || missing=1; done
  [ $missing = 0 ] && return 0
  [ -f "$3/split/manifest.json" ] || "$NODE" bin/minigpt.js demo-data --seed "$1" --count "$2" --shapes "$SHAPES" --out "$3/split" > "$3.log" 2>&1
  for size in $sizes; do
    "$NODE" models/demo/train/prepare.mjs --data "$3/split" --out "$3/prep$size" --image-size "$size" >> "$3.log" 2>&1
  done
}
pids=()
for s in $(seq 1 "$SHARDS"); do shard "$s" "$PER_SHARD" "$WORK/shard$s" & pids+=($!); done
shard 999 "$VAL_IMAGES" "$WORK/val" & pids+=($!)
[ -f "$WORK/heldout/manifest.json" ] || { "$NODE" bin/minigpt.js demo-data --seed 1000 --count "$HELDOUT_IMAGES" --shapes "$SHAPES" --out "$WORK/heldout" > "$WORK/heldout.log" 2>&1 & pids+=($!); }
for p in "${pids[@]}"; do wait "$p" || { tail -n 20 "$WORK"/*.log; exit 1; }; done
stamp "data: $SHARDS shards x $PER_SHARD images ($SHAPES shapes) prepared at $(echo $sizes) px"
if [ "${STOP_AFTER:-}" = data ]; then stamp "STOP_AFTER=data: Node, the packages and the splits are in place"; exit 0; fi

shards_of() { for s in $(seq 1 "$SHARDS"); do printf '%s,' "$WORK/shard$s/prep$1"; done; }

# --- stage 1 (the ViT alone on the auxiliary task), STAGE1=shared: once per image size that a run starting
# afresh (no --init-from) has, for VIT_MINUTES with the GPU to itself, then loaded by every run of that size
# (--vit-from); an earlier call's is reused. STAGE1=per-run: each run its own, all at once (as the committed
# model's first call did: four stage 1s shared the GPU, so each got about a quarter of the steps).
# the stage-1 options, the same whether it is shared or each run's own
vit_opts=(--vit-fit-minutes "$VIT_MINUTES" --vit-batch "$VIT_BATCH" --vit-lr 3e-3)
if [ "$STAGE1" = shared ]; then
  fresh=$(for r in "${runs[@]}"; do read -r _ size opts <<< "$r"; [[ " $opts " == *" --init-from "* ]] || echo "$size"; done | sort -u)
  pids=()
  for size in $fresh; do
    s1=$WORK/runs/stage1-$size
    [ -f "$s1/vision_stage1.pt" ] && continue
    mkdir -p "$s1"
    # shellcheck disable=SC2086
    "$PY" models/demo/train/train.py --data "$(shards_of "$size")" --val "$WORK/val/prep$size" --out "$s1" \
      --device "$DEVICE" --aux-weight 1 --pos-init-scale 4 --vit-only "${vit_opts[@]}" $STAGE1_OPTS \
      > "$s1.log" 2>&1 & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || { tail -n 20 "$WORK"/runs/stage1-*.log; exit 1; }; done
  for size in $fresh; do grep -h '^vit step\|^stage 1 held-out' "$WORK/runs/stage1-$size.log" | tail -n 2 | sed "s/^/stage 1 at $size px: /"; done
  stamp "stage 1"
fi

# --- the committed package's weights, for runs that fine-tune it (--init-from @package)
mkdir -p "$WORK/runs"
if printf '%s\n' "${runs[@]}" | grep -q -- '--init-from @package\b' && [ ! -f "$WORK/runs/package.state.pt" ]; then
  "$PY" models/demo/train/from_package.py --model models/demo --out "$WORK/runs/package" > "$WORK/runs/package.log" 2>&1 \
    || { tail -n 20 "$WORK/runs/package.log"; exit 1; }
  mv "$WORK/runs/package/state.pt" "$WORK/runs/package.state.pt"
fi

# --- training: every run at once
pids=()
for r in "${runs[@]}"; do
  read -r name size opts <<< "$r"
  # --init-from @NAME: the state of run NAME of an earlier call on this machine (same WORK)
  opts=$(sed -E "s#@([A-Za-z0-9_-]+)#$WORK/runs/\1.state.pt#g" <<< "$opts")
  if [[ " $opts " == *" --init-from "* ]]; then
    stage1=()  # a continuation keeps its own vision (train.py would replace it with a stage 1 given one)
  elif [ "$STAGE1" = shared ]; then
    stage1=(--vit-from "$WORK/runs/stage1-$size/vision_stage1.pt")
  else
    stage1=("${vit_opts[@]}")
  fi
  mkdir -p "$WORK/runs/$name"
  # defaults: 64 images x 4 samples per step (8x the CPU recipe's batch, lr scaled by ~sqrt(8)), micro-batches
  # of 128, the ViT's auxiliary loss, smooth grid tokens, sine-cosine position embeddings x4 and the stage 1
  # above before the MINUTES of the whole model (README: "What the first GPU run taught", "Position
  # embeddings"); a run's own options come last and win (a run with --init-from skips stage 1).
  # shellcheck disable=SC2086
  "$PY" models/demo/train/train.py --data "$(shards_of "$size")" --val "$WORK/val/prep$size" --out "$WORK/runs/$name" \
    --state "$WORK/runs/$name.state.pt" --device "$DEVICE" --fit-minutes "$MINUTES" \
    --max-minutes "$(awk "BEGIN { print $MINUTES + 1 }")" --batch-images 64 --per-image 4 --micro 128 --lr 2e-3 \
    --warmup 400 --log-every 100 --save-every 1000 --aux-weight 1 --coord-init --pos-init-scale 4 \
    "${stage1[@]}" --vit-lr-scale 0.5 $opts \
    > "$WORK/runs/$name.log" 2>&1 & pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
for r in "${runs[@]}"; do
  read -r name _ <<< "$r"
  echo "== $name"; grep -E '^(model|fit|step [0-9]+: held-out|stopped|Traceback)|Error' "$WORK/runs/$name.log" | tail -n 6 || true
done
stamp "trained"

# --- convert and evaluate every run that saved its files
threads=$(( $(nproc) / ${#runs[@]} )); [ "$threads" -ge 1 ] || threads=1
pids=()
for r in "${runs[@]}"; do
  read -r name size _ <<< "$r"
  d=$WORK/runs/$name
  [ -f "$d/minigptv2_ckpt.pth" ] || continue
  (
    read -r heads alpha < <("$PY" -c "import json; a = json.load(open('$d/train_args.json')); print(a['vit_heads'], a['lora_alpha'])")
    "$NODE" bin/minigpt.js convert --arch minigpt-v2 --vit "$d/eva_vit.pth" --llm "$d/llama" --ckpt "$d/minigptv2_ckpt.pth" \
      --vit-heads "$heads" --image-size "$size" --lora-alpha "$alpha" --out "$WORK/packages/$name" > "$d/convert.log" 2>&1
    for task in refer identify vqa; do
      "$NODE" bin/minigpt.js eval --model "$WORK/packages/$name" --data "$WORK/heldout" --task "$task" --limit "$EVAL_ITEMS" \
        --batch 8 --threads "$threads" --provider cpu --json > "$d/eval-$task.json" 2> "$d/eval-$task.log"
    done
  ) & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
stamp "converted and evaluated"

# --- the two best runs back, the rest as a summary
"$PY" - "$WORK/runs" "$OUT" <<'EOF'
import json, os, shutil, sys
runs, out = sys.argv[1], sys.argv[2]
scores = {}
for name in sorted(os.listdir(runs)):
    d = os.path.join(runs, name)
    if not os.path.isdir(d) or name.startswith('stage1-') or name == 'package':
        continue
    acc = {}
    for task in ('refer', 'identify', 'vqa'):
        try:
            acc[task] = json.load(open(os.path.join(d, f'eval-{task}.json')))['accuracy']
        except Exception:
            acc[task] = None
    done = [v for v in acc.values() if v is not None]
    scores[name] = {**acc, 'mean': sum(done) / 3 if len(done) == 3 else None}
best = sorted((n for n in scores if scores[n]['mean'] is not None), key=lambda n: -scores[n]['mean'])[:2]
json.dump({'scores': scores, 'returned': best}, open(os.path.join(runs, 'sweep.json'), 'w'), indent=2)
print(json.dumps(scores, indent=1))
for n in best:
    os.makedirs(os.path.join(out, n), exist_ok=True)
    for f in ('eva_vit.pth', 'minigptv2_ckpt.pth', 'llama/pytorch_model.bin'):
        shutil.copy(os.path.join(runs, n, f), os.path.join(out, n, os.path.basename(f)))
print('returned:', best)
EOF
tar -C "$WORK/runs" -cJf "$OUT/meta.tar.xz" --exclude='*.pth' --exclude='*.bin' --exclude='*.pt' .
stamp "done"
exit $status
