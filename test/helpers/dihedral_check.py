# Checks train.py's dihedral() (stage 1's --vit-augment) against pixel geometry: random boxes on whole pixels,
# each drawn as a pixel mask and moved by dihedral()'s own image path; the box read back from the moved mask,
# through dense_targets(), must give exactly the patch targets that dihedral() computed from the originals.
# Prints one line per symmetry and 'agree N of 8'. Used by test/train/recipe.test.ts.
import random
import sys

import numpy as np

sys.path.insert(0, sys.argv[1])  # models/demo/train
import train as T  # noqa: E402

S, g = 112, 8
rng = random.Random(0)
colours, shapes = ['blue', 'green', 'red'], ['circle', 'square', 'star']
objects = []
for _ in range(32):
    objs = []
    for _ in range(rng.randint(1, 3)):
        x1, y1 = rng.randrange(0, S - 8), rng.randrange(0, S - 8)
        x2, y2 = rng.randrange(x1 + 4, S + 1), rng.randrange(y1 + 4, S + 1)
        objs.append({'box': [x1 / S, y1 / S, x2 / S, y2 / S], 'colour': rng.choice(colours), 'shape': rng.choice(shapes)})
    objects.append(objs)
ct, st, bt = T.dense_targets(objects, g, colours, shapes)
images = np.random.default_rng(0).integers(0, 256, (32, S, S, 3), dtype=np.uint8)
no_targets = (np.zeros((1, g * g), np.int64), np.zeros((1, g * g), np.int64), np.zeros((1, g * g, 4), np.float32))
agree, seen = 0, set()
for t in range(8):
    u8, c, s, b = T.dihedral(images, ct, st, bt, t)
    moved = []
    for objs in objects:
        out = []
        for o in objs:
            x1, y1, x2, y2 = (round(v * S) for v in o['box'])
            mask = np.zeros((1, S, S, 3), np.uint8)
            mask[0, y1:y2, x1:x2] = 1
            ys, xs = np.nonzero(T.dihedral(mask, *no_targets, t)[0][0, :, :, 0])
            out.append({**o, 'box': [xs.min() / S, ys.min() / S, (xs.max() + 1) / S, (ys.max() + 1) / S]})
        moved.append(out)
    c2, s2, b2 = T.dense_targets(moved, g, colours, shapes)
    ok = bool((c == c2).all() and (s == s2).all() and np.abs(b - b2).max() < 1e-6 and u8.shape == images.shape)
    seen.add(u8.tobytes())  # the 8 symmetries move the pixels 8 different ways
    agree += ok
    print(t, 'agrees' if ok else 'DIFFERS', float(np.abs(b - b2).max()))
print(f'agree {agree} of 8, {len(seen)} different images')
