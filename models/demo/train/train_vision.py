"""The vision encoder's auxiliary task (--aux-weight; stage 1 trains on it alone): the per-patch targets from
objects.json, the loss, stage 1's augmentation and its held-out statistics. Import it through train.py, which sets
the OpenMP wait policy before torch loads."""
import math

import numpy as np
import torch
import torch.nn.functional as F


def patches_in_box(box, grid):
    """Which patches of the grid x grid input (row-major) a box (fractions x1, y1, x2, y2) holds: those whose centre
    lies in it. The one rule that ties patches to objects (dense_targets) and image tokens to boxes (box_tokens)."""
    centre = (np.arange(grid) + 0.5) / grid
    cols = (centre >= box[0]) & (centre <= box[2])
    rows = (centre >= box[1]) & (centre <= box[3])
    return (rows[:, None] & cols[None, :]).reshape(-1)


def dense_targets(objects, grid, colours, shapes):
    """Per patch of the grid x grid input: the class ids (0 = background) of the colour and the shape of the topmost
    object whose box holds the patch centre, and that object's box (fractions of the image)."""
    n = len(objects)
    colour_t = np.zeros((n, grid * grid), dtype=np.int64)
    shape_t = np.zeros((n, grid * grid), dtype=np.int64)
    box_t = np.zeros((n, grid * grid, 4), dtype=np.float32)
    for i, objs in enumerate(objects):
        for o in objs:  # drawing order: later objects overwrite earlier ones
            inside = patches_in_box(o['box'], grid)
            colour_t[i, inside] = colours.index(o['colour']) + 1
            shape_t[i, inside] = shapes.index(o['shape']) + 1
            box_t[i, inside] = o['box']
    return colour_t, shape_t, box_t


COORD_BINS = 101  # the grid tokens <0>..<100>


def object_classes(objects):
    """The colour and shape class lists (sorted names) of objects.json: the classes of the auxiliary and name heads."""
    return (sorted({o['colour'] for objs in objects for o in objs}), sorted({o['shape'] for objs in objects for o in objs}))


def aux_head_size(colours, shapes):
    """Outputs of the auxiliary head: background + colours, background + shapes, 4 x 101 coordinate bins."""
    return len(colours) + 1 + len(shapes) + 1 + 4 * COORD_BINS


def aux_loss(model, patches, image_ids, targets, stats=None):
    """Auxiliary loss of the vision encoder (training only; the head is not part of any published file): each
    patch feature predicts the colour and shape of the object under it and, as one of the 101 grid bins per
    coordinate (the numbers the language model writes as <0>..<100>), that object's box. It gives the ViT a dense
    spatial signal from the first step instead of only what trickles back through the language model; bins rather
    than a regressed number because the language model has to read the coordinate out as a token. The bin target
    is soft (a narrow Gaussian): a neighbouring bin is nearly right. `stats` (a dict) receives accuracies."""
    colour_t, shape_t, box_t = targets
    dev = patches.device
    ids = np.array(image_ids)
    ct = torch.from_numpy(colour_t[ids]).to(dev).reshape(-1)
    st = torch.from_numpy(shape_t[ids]).to(dev).reshape(-1)
    bt = torch.from_numpy(box_t[ids]).to(dev).reshape(-1, 4)
    out = model.aux_head(patches).reshape(-1, model.aux_head.out_features)
    nc, ns = model.aux_sizes
    loss = F.cross_entropy(out[:, :nc], ct) + F.cross_entropy(out[:, nc:nc + ns], st)
    fg = ct > 0
    has_fg = bool(fg.any())
    out_fg = out[fg]
    if has_fg:
        logits = out_fg[:, nc + ns:].reshape(-1, 4, COORD_BINS)
        centre = (bt[fg] * (COORD_BINS - 1)).unsqueeze(-1)  # [n, 4, 1]
        bins = torch.arange(COORD_BINS, device=dev, dtype=torch.float32)
        soft = torch.softmax(-0.5 * ((bins - centre) / 1.0) ** 2, dim=-1)
        loss = loss + 0.5 * -(soft * F.log_softmax(logits, dim=-1)).sum(-1).mean()
        if stats is not None:
            err = (logits.argmax(-1).float() - centre.squeeze(-1)).abs()
            stats['box_err'] = float(err.mean())
    if stats is not None:
        # on the patches of objects only (most patches are background, which is easy)
        stats['colour_acc'] = float((out_fg[:, :nc].argmax(-1) == ct[fg]).float().mean()) if has_fg else 0.0
        stats['shape_acc'] = float((out_fg[:, nc:nc + ns].argmax(-1) == st[fg]).float().mean()) if has_fg else 0.0
    return loss


def dihedral(u8, colour, shape, box, t):
    """One of the 8 symmetries of the square applied to a batch of images (uint8 [B, S, S, 3]) and to their patch
    targets (dense_targets rows: colour and shape ids [B, g*g], boxes [B, g*g, 4] as fractions x1, y1, x2, y2):
    t's bit 0 transposes, bit 1 mirrors left-right, bit 2 mirrors top-bottom. Stage 1's augmentation
    (--vit-augment): no colour or shape name of the generator changes under these, and the patch-centre rule of
    patches_in_box is symmetric, so the targets stay exact."""
    B, n = colour.shape
    g = int(round(math.sqrt(n)))
    c, s, b = colour.reshape(B, g, g), shape.reshape(B, g, g), box.reshape(B, g, g, 4)
    if t & 1:
        u8, c, s = u8.transpose(0, 2, 1, 3), c.transpose(0, 2, 1), s.transpose(0, 2, 1)
        b = b.transpose(0, 2, 1, 3)[..., [1, 0, 3, 2]]
    if t & 2:
        u8, c, s, b = u8[:, :, ::-1], c[:, :, ::-1], s[:, :, ::-1], b[:, :, ::-1]
        b = np.stack((1 - b[..., 2], b[..., 1], 1 - b[..., 0], b[..., 3]), -1)
    if t & 4:
        u8, c, s, b = u8[:, ::-1], c[:, ::-1], s[:, ::-1], b[:, ::-1]
        b = np.stack((b[..., 0], 1 - b[..., 3], b[..., 2], 1 - b[..., 1]), -1)
    b = b * (c > 0)[..., None]  # background patches keep a zero box, as dense_targets writes them
    return (np.ascontiguousarray(u8), np.ascontiguousarray(c.reshape(B, n)), np.ascontiguousarray(s.reshape(B, n)),
            np.ascontiguousarray(b.reshape(B, n, 4), dtype=np.float32))


def encoded_batches(model, data, n, device='cpu', batch=64):
    """The first n images of a prepared split through the vision, in batches: (image ids, image embeds, patch
    features after ln_vision). The caller chooses no_grad / eval."""
    for j in range(0, n, batch):
        ids = list(range(j, min(n, j + batch)))
        embeds, patches = model.encode_img(torch.from_numpy(np.stack([data.images[i] for i in ids])).to(device), with_patches=True)
        yield ids, embeds, patches


def vision_val_stats(model, val, colours, shapes, device, max_images=256):
    """The auxiliary head on a held-out prepared split (its first images): colour and shape accuracy on the object
    patches and the box error, as pretrain_vision logs them for its training batches. Measured: those can be near
    100% while the held-out shape accuracy is far lower (stage 1 learns the training images' shapes)."""
    grid = val.meta['imageSize'] // 14
    n = min(max_images, val.meta['images'])
    # an object of a class the training split never had cannot be named by the head: left out (tiny splits only)
    known = [[o for o in objs if o['colour'] in colours and o['shape'] in shapes] for objs in val.objects[:n]]
    targets = dense_targets(known, grid, colours, shapes)
    sums, weight = {}, 0
    model.eval()
    with torch.no_grad():
        for ids, _, patches in encoded_batches(model, val, n, device):
            stats = {}
            aux_loss(model, patches, ids, targets, stats)
            w = int((targets[0][ids] > 0).sum())  # object patches: the stats are means over them
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v * w
            weight += w
    model.train()
    return {k: round(v / max(1, weight), 4) for k, v in sums.items()}
