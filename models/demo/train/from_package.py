"""The weights of a converted fp32 MiniGPT-v2 package (models/demo) as train.py's model: a state file for
`train.py --init-from` (a fine-tune of the committed model) and the published files it was converted from.

`minigpt convert` keeps every tensor of the published checkpoints under its own name (Linear weights transposed
for MatMul, EVA's q_bias / v_bias as one qkv bias with zeros for k) and merges the LoRA deltas into q_proj /
v_proj. So the way back is exact except for the LoRA split: the merged weight becomes the base weight and
lora_B starts at zero (lora_A at its usual random init), which is the same function. The published files
written here therefore convert back to the package byte for byte (test/train/from-package.test.ts).

  /usr/bin/python3 models/demo/train/from_package.py --model models/demo --out DIR
    -> DIR/state.pt (for --init-from), DIR/eva_vit.pth, DIR/llama/, DIR/minigptv2_ckpt.pth, DIR/train_args.json and
       the package's PROVENANCE.json (publish.mjs records it as where the fine-tune started)

Reads the ONNX files with a small protobuf walker (no onnx package: Debian's torch is all the recipe needs).
"""
import argparse
import json
import os
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import torch

sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train  # noqa: E402  (the recipe's model and its published-format writer)

FLOAT = 1  # onnx TensorProto.FLOAT


def _varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def _fields(buf):
    """(field number, wire type, value) of one protobuf message; LEN values as memoryview slices."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(buf, i)
        elif wire == 1:
            v, i = buf[i:i + 8], i + 8
        elif wire == 2:
            size, i = _varint(buf, i)
            v, i = buf[i:i + size], i + size
        elif wire == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f'unsupported protobuf wire type {wire}')
        yield field, wire, v


def read_initializers(onnx_path):
    """name -> float32 numpy array of every FLOAT initializer of an ONNX file (inline or external data)."""
    with open(onnx_path, 'rb') as f:
        model = memoryview(f.read())
    graph = next((v for f, w, v in _fields(model) if f == 7 and w == 2), None)
    if graph is None:
        raise SystemExit(f'{onnx_path}: no graph (is this an ONNX model?)')
    out = {}
    folder = os.path.dirname(onnx_path)
    for field, wire, tensor in _fields(graph):
        if field != 5 or wire != 2:
            continue
        dims, dtype, name, raw, external = [], 0, '', None, {}
        for f, w, v in _fields(tensor):
            if f == 1:
                if w == 2:  # packed
                    j = 0
                    while j < len(v):
                        d, j = _varint(v, j)
                        dims.append(d)
                else:
                    dims.append(v)
            elif f == 2:
                dtype = v
            elif f == 8:
                name = bytes(v).decode()
            elif f == 9:
                raw = bytes(v)
            elif f == 4 and w == 2:
                raw = bytes(v)  # packed float_data: the same little-endian float32 bytes
            elif f == 13:
                kv = {ff: bytes(vv).decode() for ff, _, vv in _fields(v)}
                external[kv.get(1, '')] = kv.get(2, '')
        if dtype != FLOAT:
            continue
        if external:
            offset, length = int(external.get('offset', 0)), int(external['length'])
            with open(os.path.join(folder, external['location']), 'rb') as f:
                f.seek(offset)
                raw = f.read(length)
        count = int(np.prod(dims)) if dims else 1
        if raw is None or len(raw) != 4 * count:
            raise SystemExit(f'{onnx_path}: initializer {name} has {0 if raw is None else len(raw)} bytes for {dims}')
        out[name] = np.frombuffer(raw, dtype='<f4').reshape(dims).copy()
    return out


def model_args(meta):
    """train.py's model arguments from the package's model.json (the shapes convert recorded)."""
    if meta.get('architecture') != 'minigpt-v2' or meta.get('dtype') != 'fp32':
        raise SystemExit('from_package.py reads fp32 minigpt-v2 packages only (the demo model\'s kind): '
                         f"this one is {meta.get('architecture')} {meta.get('dtype')}")
    vis, llm = meta['vision'], meta['llm']
    opts = meta.get('provenance', {}).get('options', {})
    if 'loraR' not in opts or 'loraAlpha' not in opts:
        raise SystemExit('model.json does not record loraR / loraAlpha (provenance.options)')
    return SimpleNamespace(image_size=vis['imageSize'], vit_width=vis['width'], vit_depth=vis['layers'], vit_heads=vis['heads'],
                           hidden=llm['hidden'], layers=llm['layers'], heads=llm['heads'], intermediate=llm['intermediate'],
                           rms_eps=llm['rmsNormEps'], max_positions=llm['maxPositions'], vocab=llm['vocabSize'],
                           lora_r=opts['loraR'], lora_alpha=opts['loraAlpha'])


def package_state(package, a, model):
    """train.py's state dict for `model` (built from `a`) with every weight taken from the package."""
    t = {}
    for g in ('vision', 'embed', 'decoder'):
        t.update(read_initializers(os.path.join(package, f'{g}.onnx')))
    D = a.vit_width
    state = {k: v.clone() for k, v in model.state_dict().items()}
    used = set()

    def take(name, transpose=False):
        if name not in t:
            raise SystemExit(f'{package}: the package has no initializer {name}')
        used.add(name)
        v = torch.from_numpy(t[name])
        return v.t().contiguous() if transpose else v

    def put(key, value):
        if tuple(state[key].shape) != tuple(value.shape):
            raise SystemExit(f'{key}: package tensor {tuple(value.shape)} != model {tuple(state[key].shape)}')
        state[key] = value

    ve = 'visual_encoder.'
    for k in ('patch_embed.proj.weight', 'patch_embed.proj.bias', 'cls_token', 'pos_embed'):
        put(ve + k, take(k))
    for i in range(a.vit_depth):
        p = f'blocks.{i}'
        for k in ('norm1.weight', 'norm1.bias', 'norm2.weight', 'norm2.bias', 'attn.proj.bias', 'mlp.fc1.bias', 'mlp.fc2.bias'):
            put(f'{ve}{p}.{k}', take(f'{p}.{k}'))
        for k in ('attn.qkv.weight', 'attn.proj.weight', 'mlp.fc1.weight', 'mlp.fc2.weight'):
            put(f'{ve}{p}.{k}', take(f'{p}.{k}', transpose=True))
        bias = take(f'{p}.attn.qkv.bias')
        if bias[D:2 * D].abs().max() != 0:
            raise SystemExit(f'{p}.attn.qkv.bias has a k bias: not an EVA ViT converted by minigpt convert')
        put(f'{ve}{p}.attn.q_bias', bias[:D].clone())
        put(f'{ve}{p}.attn.v_bias', bias[2 * D:].clone())
    ln_w, ln_b = take('ln_vision.weight'), take('ln_vision.bias')
    if (ln_w != 1).any() or (ln_b != 0).any():
        raise SystemExit('ln_vision is not at its default init (train.py keeps it there)')
    put('llama_proj.weight', take('llama_proj.weight', transpose=True))
    put('llama_proj.bias', take('llama_proj.bias'))

    lm = 'llama_model.'
    put(lm + 'model.embed_tokens.weight', take('model.embed_tokens.weight'))
    put(lm + 'model.norm.weight', take('model.norm.weight'))
    put(lm + 'lm_head.weight', take('lm_head.weight', transpose=True))
    for i in range(a.layers):
        p = f'model.layers.{i}'
        for k in ('input_layernorm.weight', 'post_attention_layernorm.weight'):
            put(f'{lm}{p}.{k}', take(f'{p}.{k}'))
        for k in ('self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj',
                  'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj'):
            put(f'{lm}{p}.{k}.weight', take(f'{p}.{k}.weight', transpose=True))
        for k in ('q_proj', 'v_proj'):
            # the merged weight is the base; a zero lora_B makes the LoRA path add nothing (same function)
            put(f'{lm}{p}.self_attn.{k}.lora_B.weight', torch.zeros_like(state[f'{lm}{p}.self_attn.{k}.lora_B.weight']))
    return state, sorted(set(t) - used)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', required=True, help='the package folder (model.json, vision/embed/decoder.onnx)')
    p.add_argument('--out', required=True)
    p.add_argument('--seed', type=int, default=0, help='seed of the lora_A init (the only weights not in the package)')
    a = p.parse_args()
    if not os.path.isfile(os.path.join(a.model, 'model.json')):
        raise SystemExit(f'--model {a.model}: no model.json (a package folder, as minigpt convert writes)')
    with open(os.path.join(a.model, 'model.json')) as f:
        meta = json.load(f)
    margs = model_args(meta)
    with open(os.path.join(a.model, 'tokenizer.json')) as f:
        tokenizer_json = f.read()
    torch.manual_seed(a.seed)
    model = train.MiniGPTv2(margs)
    state, unused = package_state(a.model, margs, model)
    # what is left unread must be graph constants (scalars, the rotary table, shapes), not a weight we dropped
    big = [n for n in unused if n.endswith(('.weight', '.bias'))]
    if big:
        raise SystemExit(f'{a.model}: weights this script does not map: {", ".join(big[:4])}')
    model.load_state_dict(state)
    os.makedirs(a.out, exist_ok=True)
    torch.save({'model': model.state_dict(), 'from_package': os.path.abspath(a.model)}, os.path.join(a.out, 'state.pt'))
    train.save_published(model, margs, a.out, tokenizer_json)
    # how the package was made: publish.mjs records it as the fine-tune's start (describeRun)
    prov = os.path.join(a.model, 'PROVENANCE.json')
    if os.path.isfile(prov):
        shutil.copyfile(prov, os.path.join(a.out, 'PROVENANCE.json'))
    with open(os.path.join(a.out, 'train_args.json'), 'w') as f:
        json.dump({**vars(margs), 'from_package': os.path.abspath(a.model)}, f, indent=2)
    n = sum(v.numel() for v in state.values())
    print(f'{a.out}: state.pt and the published files of {a.model} ({n / 1e6:.2f} M weights)', file=sys.stderr)


if __name__ == '__main__':
    main()
