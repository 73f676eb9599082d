#!/usr/bin/env python3
"""Reference outputs of a trained run, computed by PyTorch FROM THE PUBLISHED FILES it saved (eva_vit.pth,
llama/pytorch_model.bin, minigptv2_ckpt.pth), for check.mjs to compare with the converted ONNX package.

  /usr/bin/python3 models/demo/train/check.py --run OUT --data PREPARED [--samples 0,1,2] --out expected.json
"""
import argparse
import json
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train as T  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def load_published(run):
    a = argparse.Namespace(**json.load(open(os.path.join(run, 'train_args.json'))))
    model = T.MiniGPTv2(a)
    model.visual_encoder.load_state_dict(torch.load(os.path.join(run, 'eva_vit.pth')))
    llm = torch.load(os.path.join(run, 'llama', 'pytorch_model.bin'))
    ckpt = torch.load(os.path.join(run, 'minigptv2_ckpt.pth'))['model']
    prefix = 'llama_model.base_model.model.'
    llm.update({k[len(prefix):]: v for k, v in ckpt.items() if k.startswith(prefix)})
    model.llama_model.load_state_dict(llm)
    model.llama_proj.load_state_dict({'weight': ckpt['llama_proj.weight'], 'bias': ckpt['llama_proj.bias']})
    return model.eval(), a


@torch.no_grad()
def main():
    p = argparse.ArgumentParser()
    p.add_argument('--run', required=True)
    p.add_argument('--data', required=True)
    p.add_argument('--samples', default='0')
    p.add_argument('--steps', type=int, default=12)
    p.add_argument('--out', required=True)
    a = p.parse_args()
    torch.set_num_threads(1)
    model, _ = load_published(a.run)
    data = T.Prepared(a.data)
    emb = model.llama_model.model.embed_tokens
    out = []
    for k in [int(x) for x in a.samples.split(',')]:
        s = data.samples[k]
        img = model.encode_img(torch.from_numpy(np.array(data.images[s['i']]))[None])[0]
        prefix = torch.cat((emb(torch.tensor(s['pre'])), img, emb(torch.tensor(s['post']))), dim=0)
        ids, first = [], None
        x = prefix
        for _ in range(a.steps):
            logits = model.llama_model(x[None], torch.ones(1, x.shape[0], dtype=torch.long))[0, -1]
            if first is None:
                first = logits
            nxt = int(logits.argmax())
            ids.append(nxt)
            if nxt == 2:
                break
            x = torch.cat((x, emb(torch.tensor([nxt]))), dim=0)
        out.append({'sample': k, 'image': s['i'], 'segments': [s['pre'], s['post']], 'image_embeds': img.flatten().tolist(),
                    'first_logits': first.tolist(), 'greedy_ids': ids})
    with open(a.out, 'w') as f:
        json.dump(out, f)
    print(f'wrote {len(out)} reference sample(s) to {a.out}', file=sys.stderr)


if __name__ == '__main__':
    main()
