#!/usr/bin/env python3
"""Probe: how much of an object's colour and shape does a run's VISION hold? (README, "What identify lacks").

Reads a run's published files (eva_vit.pth, and llama_proj from minigptv2_ckpt.pth; train_args.json beside them),
encodes the images of prepared splits as the model does, pools per object the features of the patches whose
centre lies in its box (after ln_vision) and of the image tokens holding such a patch (after llama_proj), and fits
a linear classifier of the object's colour and of its shape on --train; reports its accuracy there and on --val,
overall and for the smaller and the larger half of the objects. If the held-out shape accuracy of the probe is
no better than the model's own `[identify]` answers, the vision, not the language model, is what limits them.

  /usr/bin/python3 models/demo/train/probe_vision.py --run RUN --train PREPARED[,PREPARED] --val PREPARED
Not part of the recipe: nothing it fits is published.
"""
import argparse
import json
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import train as T  # noqa: E402
from check import load_published  # noqa: E402


def object_features(model, grid, prepared, limit):
    """Per object: (mean patch feature, mean image-token feature, colour, shape, box area as a fraction)."""
    data = T.Prepared(prepared)
    if data.objects is None:
        raise SystemExit(f'{prepared}: no objects.json (prepare.mjs writes it)')
    patches_out, tokens_out, colours, shapes, areas = [], [], [], [], []
    n = min(data.meta['images'], limit)
    with torch.no_grad():
        for ids, embeds, patches in T.encoded_batches(model, data, n):
            for row, i in enumerate(ids):
                for o in data.objects[i]:
                    inside = T.patches_in_box(o['box'], grid)
                    if not inside.any():
                        continue
                    patches_out.append(patches[row][torch.from_numpy(inside)].mean(0))
                    # an image token is 4 consecutive patches (MiniGPT-v2's 4-concat)
                    tokens_out.append(embeds[row][torch.from_numpy(inside.reshape(-1, 4).any(1))].mean(0))
                    colours.append(o['colour'])
                    shapes.append(o['shape'])
                    areas.append((o['box'][2] - o['box'][0]) * (o['box'][3] - o['box'][1]))
    return torch.stack(patches_out), torch.stack(tokens_out), colours, shapes, np.array(areas)


def linear_probe(x_train, y_train, x_val, y_val, steps=300, seed=0):
    """Full-batch logistic regression on standardised features; returns (train accuracy, per-item held-out hits)."""
    torch.manual_seed(seed)
    classes = sorted(set(y_train))
    yt = torch.tensor([classes.index(c) for c in y_train])
    yv = torch.tensor([classes.index(c) if c in classes else -1 for c in y_val])
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-5
    xt, xv = (x_train - mu) / sd, (x_val - mu) / sd
    head = torch.nn.Linear(xt.shape[1], len(classes))
    opt = torch.optim.Adam(head.parameters(), 1e-2, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(head(xt), yt).backward()
        opt.step()
    with torch.no_grad():
        return (head(xt).argmax(1) == yt).float().mean().item(), (head(xv).argmax(1) == yv).numpy()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--run', required=True, help='folder with train_args.json, eva_vit.pth, minigptv2_ckpt.pth')
    p.add_argument('--train', required=True, help='prepared folder(s) the probe is fitted on')
    p.add_argument('--val', required=True, help='held-out prepared folder')
    p.add_argument('--train-images', type=int, default=4000)
    p.add_argument('--val-images', type=int, default=1000)
    p.add_argument('--threads', type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model, args = load_published(a.run)  # the whole model (small); the probes read only its vision
    grid = args.image_size // 14
    train = object_features(model, grid, a.train, a.train_images)
    val = object_features(model, grid, a.val, a.val_images)
    small = val[4] < np.median(val[4])
    report = {'run': a.run, 'train_objects': len(train[2]), 'val_objects': len(val[2])}
    for where, k in (('patches', 0), ('tokens', 1)):
        for what, y in (('colour', 2), ('shape', 3)):
            fit, hits = linear_probe(train[k], train[y], val[k], val[y])
            report[f'{where}_{what}'] = {'train': round(fit, 4), 'val': round(float(hits.mean()), 4),
                                         'val_small': round(float(hits[small].mean()), 4),
                                         'val_large': round(float(hits[~small].mean()), 4)}
            print(f'{where:8s} {what:7s} train {fit:.3f}  held-out {hits.mean():.3f} '
                  f'(smaller half {hits[small].mean():.3f}, larger half {hits[~small].mean():.3f})', file=sys.stderr)
    print(json.dumps(report))


if __name__ == '__main__':
    main()
