#!/usr/bin/env python3
"""Probe: how fast does the language model learn to READ the image tokens? (the experiments of README.md,
"Where the time goes: reading one image token among many").

Trains train.py's model (stage 2 only) from a finished stage 1 and reports, every --eval-every steps, the
teacher-forced accuracy per task on a held-out prepared split (train.val_metrics' definition). The image tokens are
either the real ones (--image vit: ViT -> ln_vision -> 4-concat -> llama_proj, auxiliary loss kept) or an ORACLE
(--image oracle): the ground truth of every patch (colour, shape and the 4 box coordinates of the object under it,
one-hot, from objects.json) concatenated 4 by 4 and mapped by a trained Linear to the hidden size, so that
perception is perfect and only the language model's reading is measured. Options that change what the model sees:

  --broadcast-steps N   for the first N steps every image token is the channel-wise max over the image's tokens
                        (for the oracle: the union of the objects' attributes), so the answer is in every token
  --slot-weight W       training-only loss: the language model's own output at each image token names (soft target)
                        the colour, shape and box tokens of the object under it, or 'background'
  --tasks refer,identify,vqa   train (and evaluate) these tasks only
  --max-objects K       scenes with at most K objects only (train and evaluation)
  --colour-only         VQA colour questions only (with --tasks vqa)

  /usr/bin/python3 models/demo/train/probe_reading.py --data PREPARED[,PREPARED] --val PREPARED --vit-from RUN/vision_stage1.pt \\
      --image oracle --steps 1000
Not part of the recipe: nothing it trains is published.
"""
import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import train as T  # noqa: E402

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', required=True)
    p.add_argument('--val', required=True)
    p.add_argument('--vit-from', required=True, help='vision_stage1.pt of a train.py run (its train_args.json beside it gives the shapes and classes)')
    p.add_argument('--image', choices=('vit', 'oracle'), default='vit')
    p.add_argument('--steps', type=int, default=1000)
    p.add_argument('--lr', type=float, default=1.5e-3)
    p.add_argument('--batch-images', type=int, default=8)
    p.add_argument('--per-image', type=int, default=4)
    p.add_argument('--eval-every', type=int, default=250)
    p.add_argument('--eval-images', type=int, default=128)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--tasks', default='', help='comma-separated task names (default: all)')
    p.add_argument('--max-objects', type=int, default=0)
    p.add_argument('--colour-only', action='store_true')
    p.add_argument('--broadcast-steps', type=int, default=0)
    p.add_argument('--slot-weight', type=float, default=0.0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    np.random.seed(a.seed)

    data, val = T.Prepared(a.data), T.Prepared(a.val)
    if data.objects is None or val.objects is None:
        raise SystemExit('the prepared folders need objects.json (re-run prepare.mjs)')
    # the shapes, and the classes its auxiliary head was built for, of the run that wrote stage 1
    run_args = json.load(open(os.path.join(os.path.dirname(a.vit_from), 'train_args.json')))
    m = argparse.Namespace(**{k: run_args[k] for k in ('image_size', 'vit_width', 'vit_depth', 'vit_heads', 'hidden', 'layers', 'heads',
                                                       'intermediate', 'rms_eps', 'lora_r', 'lora_alpha', 'vocab')})
    if m.image_size != data.meta['imageSize'] or m.vocab != data.meta['vocabSize']:
        raise SystemExit('the prepared split differs from the stage-1 run in image size or vocabulary')
    grid = m.image_size // 14
    n_tok = grid * grid // 4
    colours, shapes = (run_args['aux_classes'][k] for k in ('colours', 'shapes'))
    targets = {id(data): T.dense_targets(data.objects, grid, colours, shapes), id(val): T.dense_targets(val.objects, grid, colours, shapes)}
    model = T.MiniGPTv2(m)
    model.aux_sizes = (len(colours) + 1, len(shapes) + 1)
    model.aux_head = nn.Linear(m.vit_width, T.aux_head_size(colours, shapes))
    T.init_coordinate_tokens(model, data.tokenizer_json)
    st1 = torch.load(a.vit_from, map_location='cpu')
    model.visual_encoder.load_state_dict(st1['visual_encoder'])
    model.aux_head.load_state_dict(st1['aux_head'])
    nc, ns = model.aux_sizes
    d_sym = nc + ns + 4 * T.COORD_BINS
    model.oracle_proj = nn.Linear(4 * d_sym, m.hidden)

    vocab = [v[0] for v in json.loads(data.tokenizer_json)['model']['vocab']]
    word = {w: k for k, w in enumerate(vocab)}
    scorer = T.TaskScorer(data.tokenizer_json)
    grid_tok = [word[f'<{v}>'] for v in range(T.COORD_BINS)]
    colour_ids = [word['\u2581' + c] for c in colours]
    shape_ids = [word['\u2581' + s] for s in shapes]
    want_tasks = set(a.tasks.split(',')) if a.tasks else {t[1:-1] for t in T.TASK_TAGS}

    def keep(s):
        return scorer.task(s) in want_tasks and (not a.colour_only or s['target'][0] in colour_ids)

    def pool(d):
        return [i for i in range(d.meta['images']) if not a.max_objects or len(d.objects[i]) <= a.max_objects]

    def oracle_slots(d, ids):
        ct, st, bt = targets[id(d)]
        ids = np.array(ids)
        c = torch.from_numpy(ct[ids])
        b = torch.from_numpy(np.rint(bt[ids] * (T.COORD_BINS - 1)).astype(np.int64))
        box = F.one_hot(b, T.COORD_BINS).float() * (c > 0).float()[..., None, None]
        x = torch.cat((F.one_hot(c, nc).float(), F.one_hot(torch.from_numpy(st[ids]), ns).float(), box.flatten(-2)), -1)
        return x.reshape(len(ids), n_tok, 4 * d_sym)

    def image_tokens(d, ids, step, train):
        aux = None
        if a.image == 'oracle':
            e = model.oracle_proj(oracle_slots(d, ids))
        else:
            e, h = model.encode_img(torch.from_numpy(np.stack([d.images[i] for i in ids])), with_patches=True)
            if train:
                aux = T.aux_loss(model, h, ids, targets[id(d)])
        if train and step < a.broadcast_steps:
            e = e.amax(1, keepdim=True).expand_as(e)
        return e, aux

    def slot_words(d, i):
        """Soft target of the language model's output at each image token: the words of the object under it."""
        ct, st, bt = targets[id(d)]
        out = np.zeros((n_tok, m.vocab), dtype=np.float32)
        for j in range(n_tok):
            fg = [q for q in range(4 * j, 4 * j + 4) if ct[i, q] > 0]
            if not fg:
                out[j, word['\u2581background']] = 1.0
                continue
            q = fg[0]
            ws = [colour_ids[ct[i, q] - 1], shape_ids[st[i, q] - 1]] + [grid_tok[int(round(v * (T.COORD_BINS - 1)))] for v in bt[i, q]]
            for w in ws:
                out[j, w] += 1.0 / len(ws)
        return out

    def batches(d, ids, rng, per_image, step, train):
        img, aux = image_tokens(d, ids, step, train)
        items = []
        for b, i in enumerate(ids):
            ks = [k for k in d.by_image[i] if keep(d.samples[k])]
            for k in (ks if len(ks) <= per_image else rng.sample(ks, per_image)):
                s = d.samples[k]
                n_prompt = len(s['pre']) + n_tok + len(s['post'])
                items.append((n_prompt + len(s['target']), b, s, n_prompt))
        items.sort(key=lambda t: t[0])
        out = []
        for j in range(0, len(items), 16):
            g = items[j:j + 16]
            L, n = g[-1][0], len(g)
            tok = np.zeros((n, L), dtype=np.int64)
            pad = np.zeros((n, L), dtype=np.int64)
            y = np.full((n, L), -100, dtype=np.int64)
            for r, (length, b, s, n_prompt) in enumerate(g):
                p0 = len(s['pre'])
                tok[r, :p0] = s['pre']
                tok[r, p0 + n_tok:length] = s['post'] + s['target']
                pad[r, :length] = 1
                y[r, n_prompt:length] = s['target']
            x = model.llama_model.model.embed_tokens(torch.from_numpy(tok))
            rows = torch.arange(n)[:, None]
            cols = torch.tensor([len(s['pre']) for (_, _, s, _) in g])[:, None] + torch.arange(n_tok)[None]
            x = x.index_put((rows.expand_as(cols).reshape(-1), cols.reshape(-1)), img[torch.tensor([b for (_, b, _, _) in g])].reshape(n * n_tok, -1))
            words = torch.from_numpy(np.stack([slot_words(d, ids[b]) for (_, b, _, _) in g])) if train and a.slot_weight else None
            out.append((x, torch.from_numpy(pad), torch.from_numpy(y), g, rows, cols, words))
        return out, aux

    def evaluate():
        model.eval()
        hits = {}
        vp = pool(val)[:a.eval_images]
        with torch.no_grad():
            for j in range(0, len(vp), 16):
                for x, pad, y, g, *_ in batches(val, vp[j:j + 16], random.Random(0), 1 << 30, 1 << 30, False)[0]:
                    pred = model.llama_model(x, pad).argmax(-1)
                    for r, (length, _, s, n_prompt) in enumerate(g):
                        T.tally(hits, *scorer.score(s, pred[r, n_prompt - 1:length - 1].tolist()))
        model.train()
        return {k: round(v[0] / v[1], 3) for k, v in sorted(hits.items())}

    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, T.warmup_cosine(lambda: 200, lambda: a.steps))
    rng = random.Random(a.seed + 1)
    tp = pool(data)
    t0, avg = time.time(), None
    for step in range(a.steps):
        ids = [tp[rng.randrange(len(tp))] for _ in range(a.batch_images)]
        bs, aux = batches(data, ids, random.Random(step), a.per_image, step, True)
        total, count, slot = 0.0, 0, 0.0
        for x, pad, y, g, rows, cols, words in bs:
            logits = model.llama_model(x, pad)
            total = total + F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), y[:, 1:].reshape(-1), ignore_index=-100, reduction='sum')
            count += int((y[:, 1:] != -100).sum())
            if words is not None:
                slot = slot - (words * F.log_softmax(logits[rows, cols], -1)).sum(-1).mean() / len(bs)
        lm = total / max(1, count)
        loss = lm + (aux if aux is not None else 0.0) + a.slot_weight * slot
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        avg = lm.item() if avg is None else 0.98 * avg + 0.02 * lm.item()
        if (step + 1) % 50 == 0:
            print(f'step {step + 1} loss {avg:.3f} ({time.time() - t0:.0f} s)', file=sys.stderr, flush=True)
        if (step + 1) % a.eval_every == 0:
            print(json.dumps({'step': step + 1, 'teacher_forced_accuracy': evaluate()}), flush=True)


if __name__ == '__main__':
    main()
