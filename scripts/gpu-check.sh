#!/usr/bin/env bash
# Runs on a machine with an NVIDIA GPU and no Node.js / no internet, from the repository root, with
# .devbundle/ (scripts/gpu-bundle.sh) and .gl/ beside it. Builds a Llama-2-7B-shaped random package with
# few layers, then runs short generations on every provider that initialises (cpu, webgpu, cuda) for that
# package and models/demo, and checks the tiny golden set on the GPU.
#   bash scripts/gpu-check.sh [LLM_LAYERS] [VIT_DEPTH]
set -uo pipefail
root=$(pwd)
layers=${1:-4}
vit_depth=${2:-4}
work=${MINIGPT_GPU_WORK:-/tmp/minigpt-gpu}
out=${OUT:-$work/out}
mkdir -p "$work" "$out"
log() { echo "== $*" >&2; }

xz -dc .devbundle/node.xz > "$work/node" && chmod +x "$work/node"
export PATH="$work:$PATH"
[ -d node_modules ] || tar -xJf .devbundle/node_modules.tar.xz -C "$root"
[ -d dist ] || tar -xJf .devbundle/dist.tar.xz -C "$root"
node --version

# Dawn (the WebGPU provider) needs a Vulkan loader; NVIDIA's ICD comes with the driver.
# Only on the GPU machine (nvidia-smi present): never touch / elsewhere.
if command -v nvidia-smi >/dev/null && ! ldconfig -p | grep -q 'libvulkan.so.1'; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES="$icd"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

log "tiny golden set on each provider"
node bin/minigpt.js convert --arch minigpt-v2 --vit test/fixtures/minigptv2-tiny/eva_vit.pth --llm test/fixtures/minigptv2-tiny/llama \
  --ckpt test/fixtures/minigptv2-tiny/minigptv2_ckpt.pth --vit-heads 4 --image-size 112 --lora-r 8 --out "$work/tiny" 2>/dev/null
for p in cpu webgpu cuda; do
  node bin/minigpt.js verify --model "$work/tiny" --golden test/fixtures/minigptv2-tiny --provider "$p" > "$out/verify-$p.json" 2> "$out/verify-$p.err"
  echo "verify $p: exit $? $(node -e "try{const r=require('$out/verify-$p.json');console.log('ok='+r.ok, 'logits_err='+r.prompts.prompt.stages.logits.max_abs_err, 'ids='+JSON.stringify(r.prompts.prompt.greedy_ids))}catch{console.log('(no report) '+require('fs').readFileSync('$out/verify-$p.err','utf8').split('\n').slice(-3).join(' | '))}")"
done

log "Llama-2-7B-shaped random package: $layers LLM layers, $vit_depth ViT-g blocks"
t0=$(date +%s)
node scripts/random-checkpoint.mjs --preset "${MINIGPT_GPU_PRESET:-llama2-7b}" --llm-layers "$layers" --vit-depth "$vit_depth" --out "$work/ckpt7b" >&2 || exit 1
node bin/minigpt.js convert --arch minigpt-v2 --vit "$work/ckpt7b/eva_vit_g.pth" --llm "$work/ckpt7b/llama" \
  --ckpt "$work/ckpt7b/minigptv2_checkpoint.pth" --out "$work/pkg7b" >&2 || exit 1
echo "random checkpoint + convert: $(( $(date +%s) - t0 )) s"

log "generation on each provider"
node scripts/provider-bench.mjs --model "$work/pkg7b" --model models/demo --providers cpu,webgpu,cuda \
  --image test/fixtures/minigptv2-tiny/input.png --new-tokens 32 --json "$out/provider-bench.json"
