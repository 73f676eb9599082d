#!/usr/bin/env python3
"""How well can ANY model tell a circle from an ellipse, or a square from a rectangle, in its input?
(README, "What identify lacks").

MiniGPT-v2 stretches every image to a square (448 px upstream, 112 here), as `minigpt` does. A circle in a 2:1
image reaches the model as an ellipse of axis ratio 1/2, while the generator's ellipses and rectangles have
ratios 0.45-0.7 before the stretch. So an unrotated ellipse can look exactly like a stretched circle. This
script measures how often that happens with the generator's own scenes: each object of the four shapes is mapped
to the model's input (its outline's second moments: the two semi-axes in pixels and the tilt), measured with an
error of sigma pixels, and classified by the Bayes rule of its pair, estimated by the k nearest reference
objects (the generator's scenes from --scenes, each measured --draws times; the neighbourhoods blur the rule
at small sigma, so below ~0.25 px the estimate is low unless the reference is large). Reported per sigma: the rule's
accuracy on the held-out identify items of each shape, and the identify accuracy no model can exceed on the
split even if it named every other object right. With --report (a `minigpt eval --task identify` JSON), also
the model's accuracy on the items that are ambiguous at the middle sigma and on the clear ones.

  /usr/bin/python3 models/demo/train/aspect_ceiling.py --scenes SPLIT/scenes.json[,...] --heldout SPLIT [--report R]
"""
import argparse
import json
import os
import sys

import numpy as np

PAIRS = (('circle', 'ellipse'), ('square', 'rectangle'))


def view(objs, image_size):
    """Semi-axes (px, major first) and tilt of each object's outline after the stretch to image_size^2."""
    W = np.array([o['W'] for o in objs], dtype=np.float64)
    H = np.array([o['H'] for o in objs], dtype=np.float64)
    w = np.array([o['w'] for o in objs]) / 2
    h = np.array([o['h'] for o in objs]) / 2
    t = np.deg2rad(np.array([o['rotation'] for o in objs], dtype=np.float64))
    c, s = np.cos(t), np.sin(t)
    M = np.empty((len(objs), 2, 2))
    M[:, 0, 0], M[:, 0, 1] = image_size / W * c * w, -image_size / W * s * h
    M[:, 1, 0], M[:, 1, 1] = image_size / H * s * w, image_size / H * c * h
    # a filled square's second moments are isotropic like a disc's: one rule covers both pairs
    ev, vec = np.linalg.eigh(M @ M.transpose(0, 2, 1))
    return np.sqrt(ev[:, 1]), np.sqrt(ev[:, 0]), np.arctan2(vec[:, 1, 1], vec[:, 0, 1])


def measured(a, b, tilt, sigma, rng):
    """One noisy measurement -> features (log size, eccentricity along the doubled tilt angle)."""
    a = a + rng.normal(0, sigma, a.shape)
    b = b + rng.normal(0, sigma, b.shape)
    tilt = tilt + rng.normal(0, 1, a.shape) * sigma / np.maximum(a, 1)
    a, b = np.maximum(a, b), np.maximum(np.minimum(a, b), 0)
    e = 1 - b / np.maximum(a, 1e-6)
    return np.stack([np.log(np.maximum(a, 0.5)), 4 * e * np.cos(2 * tilt), 4 * e * np.sin(2 * tilt)], 1).astype(np.float32)


def knn_vote(queries, ref, labels, k, chunk=256):
    """Share of label 1 among the k nearest reference points of each query."""
    out = np.empty(len(queries))
    rr = (ref ** 2).sum(1)
    for j in range(0, len(queries), chunk):
        q = queries[j:j + chunk]
        d = rr[None, :] - 2 * q @ ref.T
        idx = np.argpartition(d, k, axis=1)[:, :k]
        out[j:j + chunk] = labels[idx].mean(1)
    return out


def shape_set(scenes_json):
    """The shape set a split was drawn from (its manifest.json beside scenes.json; classic when not recorded)."""
    manifest = json.load(open(os.path.join(os.path.dirname(os.path.abspath(scenes_json)), 'manifest.json')))
    return manifest.get('scene', {}).get('shapes', 'classic')


def scene_objects(paths):
    objs = []
    for p in paths:
        for sc in json.load(open(p)):
            for o in sc['objects']:
                objs.append({**o, 'W': sc['width'], 'H': sc['height'], 'image': sc['image']})
    return objs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--scenes', required=True, help='scenes.json of generated splits (the reference objects)')
    p.add_argument('--heldout', required=True, help='a split folder: scenes.json and identify.json')
    p.add_argument('--report', default='', help='minigpt eval --task identify report on that split (JSON with details)')
    p.add_argument('--sigma', default='0.25,0.5,1', help='measurement errors in px, comma-separated')
    p.add_argument('--draws', type=int, default=20, help='measurements per reference object')
    p.add_argument('--k', type=int, default=30)
    p.add_argument('--image-size', type=int, default=112)
    p.add_argument('--seed', type=int, default=0)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    sets = {shape_set(p) for p in a.scenes.split(',') + [os.path.join(a.heldout, 'scenes.json')]}
    if len(sets) > 1:
        raise SystemExit(f'the reference and held-out splits come from different shape sets ({", ".join(sorted(sets))})')
    ref_objs = scene_objects(a.scenes.split(','))
    held = scene_objects([os.path.join(a.heldout, 'scenes.json')])
    items = json.load(open(os.path.join(a.heldout, 'identify.json')))
    by_key = {(o['image'], tuple(o['bbox'])): o for o in held}
    item_objs = [by_key[(it['image'], tuple(it['bbox']))] for it in items]
    right = None
    if a.report:
        details = {d['img_id']: d['correct'] for d in json.load(open(a.report))['details']}
        right = np.array([details.get(it['img_id'], False) for it in items], dtype=bool)
    sigmas = [float(s) for s in a.sigma.split(',')]
    result = {'identify_items': len(items), 'reference_objects': len(ref_objs), 'sigma': {}}
    ambiguous = np.zeros(len(items), dtype=bool)
    for si, sigma in enumerate(sigmas):
        errors = 0.0
        per_shape = {}
        for A, B in PAIRS:
            ref = [o for o in ref_objs if o['shape'] in (A, B)]
            idx = [i for i, o in enumerate(item_objs) if o['shape'] in (A, B)]
            if not ref or not idx:
                continue
            ra, rb, rt = view(ref, a.image_size)
            lab = np.array([o['shape'] == B for o in ref], dtype=np.float32)
            feats = np.concatenate([measured(ra, rb, rt, sigma, rng) for _ in range(a.draws)])
            labels = np.tile(lab, a.draws)
            qa, qb, qt = view([item_objs[i] for i in idx], a.image_size)
            # 10 measurements of each held-out object: the share the rule gets right
            hits = np.mean([(knn_vote(measured(qa, qb, qt, sigma, rng), feats, labels, a.k) > 0.5)
                            == np.array([item_objs[i]['shape'] == B for i in idx]) for _ in range(10)], axis=0)
            errors += float((1 - hits).sum())
            for shape in (A, B):
                mine = np.array([item_objs[i]['shape'] == shape for i in idx], dtype=bool)
                if mine.any():  # a set without ellipses (aspect-safe) has no ellipse items
                    per_shape[shape] = {'items': int(mine.sum()), 'bayes_accuracy': round(float(hits[mine].mean()), 4)}
            if si == len(sigmas) // 2:
                ambiguous[np.array(idx)] = hits < 0.5
        ceiling = 1 - errors / len(items)
        result['sigma'][str(sigma)] = {'shapes': per_shape, 'identify_ceiling': round(ceiling, 4)}
        print(f'sigma {sigma} px: ' + ', '.join(f'{s} {v["bayes_accuracy"]:.3f} ({v["items"]})' for s, v in per_shape.items())
              + f'; identify at most {ceiling:.3f}', file=sys.stderr)
    if right is not None:
        pair_items = np.array([any(o['shape'] in pair for pair in PAIRS) for o in item_objs])
        result['model'] = {
            'sigma': sigmas[len(sigmas) // 2],
            'ambiguous': {'items': int(ambiguous.sum()), 'accuracy': round(float(right[ambiguous].mean()), 4) if ambiguous.any() else None},
            'clear_pair_items': {'items': int((pair_items & ~ambiguous).sum()), 'accuracy': round(float(right[pair_items & ~ambiguous].mean()), 4)},
            'other_items': {'items': int((~pair_items).sum()), 'accuracy': round(float(right[~pair_items].mean()), 4)},
        }
        print(f'model: ambiguous items {result["model"]["ambiguous"]}, clear items of the four shapes '
              f'{result["model"]["clear_pair_items"]}, the other shapes {result["model"]["other_items"]}', file=sys.stderr)
    print(json.dumps(result))


if __name__ == '__main__':
    main()
