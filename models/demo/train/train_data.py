"""train.py's data: the prepared splits, the image order of stage 2, and its batches (make_batch), with the targets
of --attn-sup / --name-sup. Import it through train.py, which sets the OpenMP wait policy before torch loads."""
import json
import math
import os
from typing import NamedTuple, Optional

import numpy as np
import torch

from train_vision import COORD_BINS, aux_loss, patches_in_box


class Prepared:
    """One prepared folder, or several (comma-separated, e.g. shards generated in parallel) read as one."""

    def __init__(self, dirs):
        dirs = [d for d in dirs.split(',') if d]
        metas = [json.load(open(os.path.join(d, 'meta.json'))) for d in dirs]
        S = metas[0]['imageSize']
        if any(m['imageSize'] != S or m['vocabSize'] != metas[0]['vocabSize'] for m in metas):
            raise SystemExit('the prepared folders differ in image size or vocabulary')
        self.meta = {**metas[0], 'images': sum(m['images'] for m in metas), 'samples': sum(m['samples'] for m in metas)}
        self.tokenizer_json = open(os.path.join(dirs[0], 'tokenizer.json')).read()
        images, self.samples, offset = [], [], 0
        for d, m in zip(dirs, metas):
            images.append(np.memmap(os.path.join(d, 'images.u8'), dtype=np.uint8, mode='r', shape=(m['images'], S, S, 3)))
            for l in open(os.path.join(d, 'samples.jsonl')):
                if l.strip():
                    s = json.loads(l)
                    s['i'] += offset
                    self.samples.append(s)
            offset += m['images']
        self.images = images[0] if len(images) == 1 else np.concatenate(images)
        paths = [os.path.join(d, 'objects.json') for d in dirs]
        self.objects = [o for p in paths for o in json.load(open(p))] if all(os.path.exists(p) for p in paths) else None
        n = self.meta['images']
        self.by_image = [[] for _ in range(n)]
        for k, s in enumerate(self.samples):
            self.by_image[s['i']].append(k)


def object_counts(data):
    if data.objects is None:
        raise SystemExit('--object-curriculum needs objects.json in every prepared folder (re-run prepare.mjs)')
    return [len(objs) for objs in data.objects]


class ImageOrder:
    """The images of each step: shuffled passes over the split, a function of the seed and the step only (so a resumed
    run replays it). With --object-curriculum N the passes are over the scenes of at most k objects, k = 1 for the
    first N steps, then 2, ... up to every scene: the language model first learns to read the image where there is one
    object to find, then to pick one among several (measured: reading one slot among many is what it learns slowest;
    see the README)."""

    def __init__(self, n_images, rng, counts=None, every=0):
        self.n, self.rng, self.counts, self.every = n_images, rng, counts, every
        self.cap, self.pool, self.perm, self.pos = None, list(range(n_images)), [], 0

    def cap_at(self, step):
        if not self.every:
            return None
        cap = max(1 + step // self.every, min(self.counts))  # never an empty pool
        return None if cap >= max(self.counts) else cap

    def take(self, step, k):
        cap = self.cap_at(step)
        if cap != self.cap:
            self.cap, self.perm, self.pos = cap, [], 0
            self.pool = list(range(self.n)) if cap is None else [i for i, c in enumerate(self.counts) if c <= cap]
        ids = []
        for _ in range(k):
            if self.pos >= len(self.perm):
                self.perm, self.pos = self.rng.sample(self.pool, len(self.pool)), 0
            ids.append(self.perm[self.pos])
            self.pos += 1
        return ids


def referred_box(s, scorer):
    """The box (fractions of the image) that a sample's last answer is about: the one the answer writes for
    `[refer]`, the one the question gives for `[identify]`; None for the other tasks."""
    task = scorer.task(s)
    if task == 'refer':
        bins = [scorer.grid_of[t] for t in s['target'] if t in scorer.grid_of][:4]
    elif task == 'identify':
        bins = [scorer.grid_of[t] for t in s['post'] if t in scorer.grid_of][-4:]
    else:
        return None
    return [b / (COORD_BINS - 1) for b in bins] if len(bins) == 4 else None


def box_tokens(box, grid):
    """The image tokens (4 adjacent patches each, as the 4-concat groups them) holding a patch whose centre lies in
    the box (patches_in_box); the token under the box centre when no centre does."""
    patches = np.nonzero(patches_in_box(box, grid))[0].tolist()
    if not patches:
        col = min(grid - 1, int((box[0] + box[2]) / 2 * grid))
        row = min(grid - 1, int((box[1] + box[3]) / 2 * grid))
        patches = [row * grid + col]
    return sorted({p // 4 for p in patches})


def parse_heads(spec, first, layers, heads):
    """--attn-sup-layers: 'L' (the first `first` heads of layer L) or 'L:H' (head H), comma-separated -> [(L, H)]."""
    out = []
    for item in (v.strip() for v in spec.split(',') if v.strip()):
        l, _, h = item.partition(':')
        try:
            pairs = [(int(l), int(h))] if h else [(int(l), k) for k in range(first)]
        except ValueError:
            raise SystemExit(f'--attn-sup-layers: "{item}" is not L or L:H')
        for pl, ph in pairs:
            if not (0 <= pl < layers and 0 <= ph < heads):
                raise SystemExit(f'--attn-sup-layers: "{item}": the decoder has {layers} layers of {heads} heads')
            if (pl, ph) not in out:
                out.append((pl, ph))
    return out


class MicroBatch(NamedTuple):
    """One padded micro-batch of make_batch. `A` (--attn-sup): 1 where an answer position of a `[refer]` /
    `[identify]` sample (--sup-about: of any sample about one object) meets an image token of that object; `names`
    (--name-sup): [n, L, 2] the colour and shape class of that object at those answer positions, -100 elsewhere;
    `group`: the samples (with_items)."""
    x: torch.Tensor
    pad: torch.Tensor
    y: torch.Tensor
    n_targets: int
    A: Optional[torch.Tensor] = None
    names: Optional[torch.Tensor] = None
    group: Optional[list] = None


def referred_object(objects, box):
    """The index of the object (objects.json of one image) whose box matches a referred box best."""
    return max(range(len(objects)), key=lambda k: box_iou(objects[k]['box'], box))


def make_batch(model, data, image_ids, rng, per_image, image_tokens, micro, aux_targets=None, with_items=False, attn_sup=None,
               name_classes=None, about=False):
    """Encodes the images once and builds one sequence per sample: pre ++ image ++ post ++ target.

    The sequences are sorted by length and cut into micro-batches of `micro`, each padded (right) only to its
    own longest sequence, so short VQA answers do not pay for long grounded captions. Token ids are laid out
    on the host and embedded in one lookup; the image embeddings are written into their slots with one
    index_put, so a step costs a few device calls whatever the batch size. Returns (micro-batches, the vision
    encoder's auxiliary loss, or None without `aux_targets`). With `attn_sup` (a TaskScorer), each MicroBatch also
    carries A [n, L, L]: 1 where an answer position (one that predicts a target token) of a `[refer]` / `[identify]`
    sample meets an image token of the object it is about (see attention_loss_sum); with `name_classes` too
    ((colours, shapes), the class lists), `names`: that object's colour and shape class there (name_loss_sum). With
    `about`, the object is the one the sample's `about` names (prepare.mjs), in any task: VQA questions about one
    object and follow-ups too."""
    dev = model.mean.device
    u8 = torch.from_numpy(np.stack([data.images[i] for i in image_ids])).to(dev)
    img, patches = model.encode_img(u8, with_patches=True)
    aux = aux_loss(model, patches, image_ids, aux_targets) if aux_targets is not None else None
    emb = model.llama_model.model.embed_tokens
    T = image_tokens
    grid = int(round(math.sqrt(T * 4)))  # patches per side: each image token is 4 patches
    items = []
    for b, i in enumerate(image_ids):
        ks = data.by_image[i]
        chosen = ks if len(ks) <= per_image else rng.sample(ks, per_image)
        for k in chosen:
            s = data.samples[k]
            n_prompt = len(s['pre']) + T + len(s['post'])
            items.append((n_prompt + len(s['target']), b, s, n_prompt))
    items.sort(key=lambda t: t[0])
    batches = []
    for j in range(0, len(items), micro):
        group = items[j:j + micro]
        L = group[-1][0]
        n = len(group)
        ids = np.zeros((n, L), dtype=np.int64)
        pad = np.zeros((n, L), dtype=np.int64)
        y = np.full((n, L), -100, dtype=np.int64)
        rows, cols, src = [], [], []
        A = np.zeros((n, L, L), dtype=np.float32) if attn_sup is not None else None
        names = np.full((n, L, 2), -100, dtype=np.int64) if name_classes is not None else None
        for r, (length, b, s, n_prompt) in enumerate(group):
            p0 = len(s['pre'])
            objs = data.objects[image_ids[b]] if data.objects is not None else None
            if attn_sup is None:
                box = None
            elif about:
                box = objs[s['about']]['box'] if 'about' in s else None
            else:
                box = referred_box(s, attn_sup)
            if box is not None:
                keys = [p0 + t for t in box_tokens(box, grid)]
                A[r, n_prompt - 1:length - 1, keys] = 1.0
                if names is not None:
                    o = objs[s['about']] if about else objs[referred_object(objs, box)]
                    names[r, n_prompt - 1:length - 1] = (name_classes[0].index(o['colour']), name_classes[1].index(o['shape']))
            ids[r, :p0] = s['pre']
            ids[r, p0 + T:length] = s['post'] + s['target']
            pad[r, :length] = 1
            y[r, n_prompt:length] = s['target']
            rows.append(np.full(T, r))
            cols.append(np.arange(p0, p0 + T))
            src.append(b)
        x = emb(torch.from_numpy(ids).to(dev))
        r_idx = torch.from_numpy(np.concatenate(rows)).to(dev)
        c_idx = torch.from_numpy(np.concatenate(cols)).to(dev)
        b_idx = torch.tensor(src, device=dev)
        x = x.index_put((r_idx, c_idx), img[b_idx].reshape(n * T, -1))
        n_targets = int((y[:, 1:] != -100).sum())  # counted on the host: no device sync
        batches.append(MicroBatch(x, torch.from_numpy(pad).to(dev), torch.from_numpy(y).to(dev), n_targets,
                                  torch.from_numpy(A).to(dev) if A is not None else None,
                                  torch.from_numpy(names).to(dev) if names is not None else None,
                                  group if with_items else None))
    return batches, aux


def box_iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union if union > 0 else 0.0
