#!/usr/bin/env python3
"""Trains the small MiniGPT-v2-architecture demo model on a prepared demo-data split (see prepare.mjs).

Architecture, as upstream MiniGPT-v2 and as `minigpt convert --arch minigpt-v2` reads it:
  EVA ViT (eva_vit.py: Conv patch embedding, CLS token, absolute pos_embed, pre-norm blocks with LayerNorm
  eps 1e-6, attention with one qkv Linear without bias + q_bias / v_bias, exact-erf GELU MLP of
  int(D * 4.3637) hidden units, no final norm)
  -> ln_vision (LayerNorm eps 1e-5 at its default init, weight 1 / bias 0, frozen: MiniGPT-v2 never loads it)
  -> drop CLS -> concatenate 4 adjacent patch tokens -> llama_proj (Linear 4D -> hidden)
  -> Llama decoder (HF LlamaForCausalLM: RMSNorm, rotate_half RoPE, SiLU-gated MLP, untied lm_head)
     with LoRA on q_proj / v_proj (y = W x + (alpha / r) B A x).
Everything is trained from scratch here (upstream trains only llama_proj + LoRA on frozen pretrained parts).

Saved in the PUBLISHED formats (OUT/):
  eva_vit.pth                 torch.save(state dict) with eva_vit_g.pth's key names
  llama/                      Hugging Face folder: config.json, generation_config.json, pytorch_model.bin,
                              tokenizer.json (the base weights; LoRA NOT merged)
  minigptv2_ckpt.pth          torch.save({'model': {llama_proj.*, llama_model.base_model.model.model.layers.N.
                              self_attn.{q,v}_proj.lora_{A,B}.weight}}) as upstream's runner saves it
  train_log.jsonl, state.pt   losses; resumable training state (--resume)

Loss: next-token cross-entropy on the answer of the last turn + '</s>' (as upstream: targets are the answer
tokens, the prompt is masked with -100). Fixed seeds; the data order follows from --seed.

  /usr/bin/python3 models/demo/train/train.py --data PREPARED --out OUT [--steps N | --epochs E] [...]
"""
import argparse
import json
import math
import os
import random
import sys
import time

# OpenMP threads that spin while waiting cost a lot on a busy 2-core machine (measured: 2-5x slower steps).
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
sys.dont_write_bytecode = True  # no __pycache__ in the repository

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from train_data import ImageOrder, Prepared, make_batch, object_counts, parse_heads  # noqa: E402
from train_loss import TaskScorer, loss_of, val_metrics  # noqa: E402
from train_model import MiniGPTv2, init_coordinate_tokens, save_published  # noqa: E402
from train_vision import aux_head_size, aux_loss, dense_targets, dihedral, object_classes, vision_val_stats  # noqa: E402
# not used here: re-exported for the probes, check.py and the tests, which reach the recipe's parts as train.X
from train_data import box_iou, box_tokens, referred_box  # noqa: E402,F401
from train_loss import TASK_TAGS, attention_loss_sum, name_loss_sum, tally  # noqa: E402,F401
from train_vision import COORD_BINS, encoded_batches, patches_in_box  # noqa: E402,F401


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------

def warmup_cosine(warmup, total):
    """The learning-rate factor of both stages: linear warm-up over warmup() steps, then cosine decay to 5% at
    total() steps (callables: a fitted run learns its step count after the first steps)."""
    return lambda s: min(1.0, (s + 1) / warmup()) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total()))))


class StepFit:
    """--fit-minutes / --vit-fit-minutes: times the steps after the 5th up to `probe` (the first ones pay for kernel
    selection and allocator growth) and then gives the step count that fills `minutes`."""

    def __init__(self, minutes, probe):
        self.minutes, self.probe = minutes, probe
        self.per_step = None

    def after(self, done):
        """Call after each step with the number of steps done; returns the fitted step count once, else None."""
        if not self.minutes:
            return None
        if done == 5:
            self.t = time.time()
        elif done == self.probe:
            self.per_step = (time.time() - self.t) / (self.probe - 5)
            return max(self.probe + 1, int(self.minutes * 60 / self.per_step))
        return None


def pretrain_vision(model, data, aux_targets, a, device, log):
    """Stage 1 (--vit-steps): the vision encoder alone, on the auxiliary task, before the language model sees it
    (upstream starts from a pretrained EVA-CLIP; this is our small stand-in). Cheap: no language model, so large
    batches. Deterministic from --seed."""
    params = list(model.visual_encoder.parameters()) + list(model.aux_head.parameters())
    opt = torch.optim.AdamW(params, lr=a.vit_lr, betas=(0.9, 0.98), weight_decay=a.weight_decay)
    plan = {'steps': a.vit_steps or 1 << 30}  # --vit-fit-minutes resets it after 10 timed steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(lambda: max(1, plan['steps'] // 20), lambda: plan['steps']))
    fit = StepFit(a.vit_fit_minutes, 15)
    rng = random.Random(a.seed + 7)
    augment_rng = random.Random(a.seed + 11)  # its own stream: the image order is the same with and without
    n = data.meta['images']
    t0 = time.time()
    step = 0
    while step < plan['steps']:
        ids = [rng.randrange(n) for _ in range(a.vit_batch)]
        images, targets, rows = np.stack([data.images[i] for i in ids]), aux_targets, ids
        if a.vit_augment:
            images, *batch_targets = dihedral(images, *(t[ids] for t in aux_targets), augment_rng.randrange(8))
            targets, rows = tuple(batch_targets), list(range(len(ids)))
        _, patches = model.encode_img(torch.from_numpy(images).to(device), with_patches=True)
        stats = {}
        loss = aux_loss(model, patches, rows, targets, stats)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        fitted = fit.after(step + 1)
        if fitted:
            plan['steps'] = a.vit_steps = fitted
            print(f'stage 1: {plan["steps"]} steps in {a.vit_fit_minutes} min', file=sys.stderr)
        if (step + 1) % a.log_every == 0 or step + 1 == plan['steps']:
            rec = {'vit_step': step + 1, 'aux_loss': round(loss.item(), 4), **{k: round(v, 4) for k, v in stats.items()}, 'elapsed_s': round(time.time() - t0, 1)}
            log.write(json.dumps(rec) + '\n')
            log.flush()
            print(f"vit step {step + 1}/{plan['steps']} aux {rec['aux_loss']:.4f} colour {stats['colour_acc']:.3f} shape {stats['shape_acc']:.3f} "
                  f"box err {stats.get('box_err', 0):.2f} bins ({rec['elapsed_s']} s)", file=sys.stderr)
        step += 1


HEADS = ('aux_head.', 'name_head.')  # training-only heads (never published)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', required=True, help='prepared folder (prepare.mjs), or several separated by commas')
    p.add_argument('--out', required=True)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--steps', type=int, default=0, help='optimiser steps (0: from --epochs)')
    p.add_argument('--epochs', type=float, default=10.0, help='passes over the images (each step sees --batch-images images)')
    p.add_argument('--batch-images', type=int, default=8)
    p.add_argument('--per-image', type=int, default=4, help='samples per image per step')
    p.add_argument('--micro', type=int, default=8, help='sequences per padded micro-batch (sorted by length)')
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--warmup', type=int, default=200)
    p.add_argument('--weight-decay', type=float, default=0.01)
    p.add_argument('--threads', type=int, default=0, help='torch threads (default: all cores)')
    p.add_argument('--vit-width', type=int, default=192)
    p.add_argument('--vit-depth', type=int, default=4)
    p.add_argument('--vit-heads', type=int, default=4)
    p.add_argument('--hidden', type=int, default=256)
    p.add_argument('--layers', type=int, default=4)
    p.add_argument('--heads', type=int, default=4)
    p.add_argument('--intermediate', type=int, default=688)
    p.add_argument('--rms-eps', type=float, default=1e-6)
    p.add_argument('--max-positions', type=int, default=512)
    p.add_argument('--lora-r', type=int, default=8)
    p.add_argument('--lora-alpha', type=int, default=16)
    p.add_argument('--log-every', type=int, default=20)
    p.add_argument('--save-every', type=int, default=500, help='steps between saves (published files + state.pt)')
    p.add_argument('--resume', action='store_true', help='continue from the state file')
    p.add_argument('--state', default='', help='resumable state file (default OUT/state.pt)')
    p.add_argument('--device', default='auto', help='auto (cuda when available, else cpu), cpu, cuda')
    p.add_argument('--fit-minutes', type=float, default=0,
                   help='choose the step count so that training takes about this long: the first --fit-probe steps '
                        'are timed and the schedule is set from them (overrides --steps / --epochs; not resumable)')
    p.add_argument('--aux-weight', type=float, default=0.0,
                   help='weight of the vision encoder\'s auxiliary loss (colour, shape and box of the object under each '
                        'patch, from objects.json); 0: off')
    p.add_argument('--vit-steps', type=int, default=0,
                   help='stage 1: steps of the vision encoder alone on the auxiliary task (needs --aux-weight) before '
                        'the language model trains; 0: none')
    p.add_argument('--vit-fit-minutes', type=float, default=0,
                   help='stage 1 takes about this long: its steps are set from 10 timed ones (overrides --vit-steps)')
    p.add_argument('--vit-batch', type=int, default=64, help='images per stage-1 step')
    p.add_argument('--vit-lr', type=float, default=2e-3, help='stage-1 learning rate')
    p.add_argument('--vit-from', default='', help='load a finished stage 1 (OUT/vision_stage1.pt of an earlier run) instead of running it')
    p.add_argument('--vit-augment', action='store_true',
                   help='stage 1 sees each batch under one of the 8 symmetries of the square (targets alike): measured, '
                        'stage 1 learns the training images\' shapes and not the held-out ones\'')
    p.add_argument('--vit-only', action='store_true',
                   help='stop after stage 1 (OUT/vision_stage1.pt, for --vit-from of other runs; gpu.sh shares one per image size)')
    p.add_argument('--vit-lr-scale', type=float, default=1.0, help='stage 2: the vision encoder\'s learning rate as a fraction of --lr')
    p.add_argument('--pos-init-scale', type=float, default=0.0,
                   help='start the ViT\'s pos_embed as 2-D sine-cosine embeddings times this (see EvaViT.init_pos_embed_sincos); '
                        '0: the usual 0.02-std random init')
    p.add_argument('--object-curriculum', type=int, default=0,
                   help='stage 2 trains on scenes of at most k objects, k = 1 for the first N steps, then 2, ... (0: every scene '
                        'from the start)')
    p.add_argument('--attn-sup', type=float, default=0.0,
                   help='weight of the attention loss (training only): the heads of --attn-sup-layers learn to attend, at '
                        'the answer of a [refer] / [identify] sample, to the image tokens of the object it is about; 0: off')
    p.add_argument('--attn-sup-layers', default='1,2',
                   help='the heads --attn-sup trains: decoder layers (from 0), each L (its first --attn-sup-heads heads) or '
                        'L:H (head H), separated by commas')
    p.add_argument('--attn-sup-heads', type=int, default=1, help='heads trained in each layer given without :H')
    p.add_argument('--name-sup', type=float, default=0.0,
                   help='weight of the name loss (training only; needs objects.json): what each head of --attn-sup-layers '
                        'returns at the answer of a [refer] / [identify] sample predicts the colour and shape of the object '
                        'it is about, through a linear head of its own; 0: off')
    p.add_argument('--sup-about', action='store_true',
                   help='--attn-sup / --name-sup targets for every sample whose answer is about one object (the "about" '
                        'of samples.jsonl: VQA colour / shape / side / existence questions and follow-ups too), not only '
                        '[refer] / [identify]')
    p.add_argument('--init-from', default='',
                   help='start from the weights of an earlier run\'s state.pt, or of a package (from_package.py) (same '
                        'shapes; a new optimiser and schedule): a second schedule on a finished run, or a fine-tune. Stage 1 '
                        'runs on its vision only with --vit-steps / --vit-fit-minutes; --vit-from replaces its vision')
    p.add_argument('--coord-init', action='store_true', help='smooth initial embeddings for the grid tokens <0>..<100>')
    p.add_argument('--val', default='', help='held-out prepared folder: its loss is logged at every save')
    p.add_argument('--fit-probe', type=int, default=40, help='steps timed by --fit-minutes (more than 5)')
    p.add_argument('--stop-at', type=int, default=0, help='save and stop after this step (continue later with --resume)')
    p.add_argument('--max-minutes', type=float, default=0, help='save and stop after this much wall time (continue with --resume)')
    a = p.parse_args()

    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    device = torch.device('cuda' if a.device == 'auto' and torch.cuda.is_available() else ('cpu' if a.device == 'auto' else a.device))
    if device.type == 'cuda':
        # TF32 matmuls: ~8x the fp32 rate on Hopper; this small model trains the same within noise
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)

    data = Prepared(a.data)
    val = Prepared(a.val) if a.val else None
    a.image_size = data.meta['imageSize']
    a.vocab = data.meta['vocabSize']
    grid = a.image_size // 14
    assert a.image_size % 14 == 0 and (grid * grid) % 4 == 0, 'the image size must be a multiple of 14 with a patch count divisible by 4'
    image_tokens = grid * grid // 4
    tokenizer_json = data.tokenizer_json
    n_images = data.meta['images']
    steps = a.steps or max(1, int(math.ceil(a.epochs * n_images / a.batch_images)))

    model = MiniGPTv2(a)
    aux_targets, name_classes = None, None
    if (a.aux_weight or a.name_sup) and data.objects is None:
        raise SystemExit('--aux-weight and --name-sup need objects.json in every prepared folder (re-run prepare.mjs)')
    if data.objects is not None:
        colours, shapes = object_classes(data.objects)
    if a.aux_weight:
        aux_targets = dense_targets(data.objects, grid, colours, shapes)
        model.aux_sizes = (len(colours) + 1, len(shapes) + 1)
        model.aux_head = nn.Linear(a.vit_width, aux_head_size(colours, shapes))
        a.aux_classes = {'colours': colours, 'shapes': shapes}
    if a.pos_init_scale:
        model.visual_encoder.init_pos_embed_sincos(a.pos_init_scale)
    if a.name_sup:
        # one linear head per supervised head: colour classes, then shape classes (training only, never published)
        name_classes = (colours, shapes)
        model.name_classes = name_classes
        model.name_head = nn.ModuleDict({f'{l}_{h}': nn.Linear(a.hidden // a.heads, len(colours) + len(shapes))
                                         for l, h in parse_heads(a.attn_sup_layers, a.attn_sup_heads, a.layers, a.heads)})
        a.name_classes = {'colours': colours, 'shapes': shapes}
    if a.coord_init:
        print(f'coord-init: {init_coordinate_tokens(model, tokenizer_json)} grid tokens', file=sys.stderr)
    if a.init_from and not a.resume:
        if not os.path.isfile(a.init_from):
            raise SystemExit(f'--init-from {a.init_from}: no such file (the state.pt of an earlier run)')
        # weights_only=False: our own state file, which also holds the RNG states (torch >= 2.6 loads tensors only by default)
        earlier = torch.load(a.init_from, map_location='cpu', weights_only=False)
        weights = earlier['model']
        own = model.state_dict()
        # a training-only head the earlier run lacks (from_package.py's state has none) starts afresh
        missing = sorted(k for k in set(own) - set(weights) if not k.startswith(HEADS))
        if missing:
            raise SystemExit(f'--init-from {a.init_from} lacks {", ".join(missing[:4])}')
        wrong = sorted(k for k in own if k in weights and weights[k].shape != own[k].shape and not k.startswith(HEADS))
        if wrong:
            raise SystemExit(f'--init-from {a.init_from}: {wrong[0]} is {tuple(weights[wrong[0]].shape)}, this run\'s is '
                             f'{tuple(own[wrong[0]].shape)} (the model shapes must agree)')
        keep = {k: v for k, v in weights.items() if k in own and v.shape == own[k].shape}  # a head of another size starts afresh
        # the state records its heads' classes (None: a state from before it did, or from_package.py's, with no heads)
        if earlier.get('aux_classes') not in (None, getattr(a, 'aux_classes', None)):
            # heads over other classes (another shape set), even of the same size, would only mislead: they start afresh
            keep = {k: v for k, v in keep.items() if not k.startswith(HEADS)}
            print('aux / name heads start afresh: the earlier run had other object classes', file=sys.stderr)
        model.load_state_dict(keep, strict=False)
        print(f'weights from {a.init_from}', file=sys.stderr)
    if a.sup_about and (data.objects is None or not any('about' in s for s in data.samples)):
        raise SystemExit('--sup-about needs samples with "about" and objects.json (re-run demo-data and prepare.mjs)')
    sup_scorer = None
    if a.attn_sup or a.name_sup:
        sup_scorer = TaskScorer(tokenizer_json)
        for l, h in parse_heads(a.attn_sup_layers, a.attn_sup_heads, a.layers, a.heads):
            model.llama_model.model.layers[l].self_attn.keep_heads.append(h)
    model = model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    groups = []
    for vision in (False, True):
        # the vision encoder (and its auxiliary head) may train slower once stage 1 has taught it (--vit-lr-scale)
        named = [(n, p) for n, p in model.named_parameters() if n.startswith(('visual_encoder.', 'aux_head.')) == vision]
        lr = a.lr * (a.vit_lr_scale if vision else 1.0)
        groups.append({'params': [p for n, p in named if p.dim() >= 2], 'weight_decay': a.weight_decay, 'lr': lr})
        groups.append({'params': [p for n, p in named if p.dim() < 2], 'weight_decay': 0.0, 'lr': lr})
    opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.98))
    # linear warm-up, then cosine decay to 5% of --lr
    plan = {'steps': steps}  # --fit-minutes resets it after the probe; the schedule reads it at every step
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(lambda: a.warmup, lambda: plan['steps']))
    fit = StepFit(a.fit_minutes, a.fit_probe)
    os.makedirs(a.out, exist_ok=True)
    start = 0
    order_rng = random.Random(a.seed)
    state_path = a.state or os.path.join(a.out, 'state.pt')
    if a.fit_minutes and a.resume:
        raise SystemExit('--fit-minutes cannot be resumed: give the step count it chose (train_args.json) with --steps')
    if a.resume and os.path.exists(state_path):
        st = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(st['model'])
        opt.load_state_dict(st['opt'])
        sched.load_state_dict(st['sched'])
        start = st['step']
        torch.set_rng_state(st['torch_rng'].cpu())
        print(f'resumed at step {start}', file=sys.stderr)
    def write_args():
        with open(os.path.join(a.out, 'train_args.json'), 'w') as f:
            json.dump({**vars(a), 'steps_total': plan['steps'], 'params': n_params, 'torch': torch.__version__,
                       'device_name': torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, f, indent=2)
    write_args()
    print(f'model: {n_params / 1e6:.2f} M parameters; {n_images} images, {len(data.samples)} samples; {steps} steps of '
          f'{a.batch_images} images x {a.per_image} samples; device {device}, {torch.get_num_threads()} threads', file=sys.stderr)

    if a.vit_only and (not (a.vit_steps or a.vit_fit_minutes) or a.vit_from or start):
        raise SystemExit('--vit-only needs --vit-steps or --vit-fit-minutes, and neither --vit-from nor --resume')
    log = open(os.path.join(a.out, 'train_log.jsonl'), 'a')
    # with --init-from, stage 1 (or --vit-from's) replaces the earlier run's vision only when asked for: a fine-tune
    # on other shapes (from_package.py) wants it, a plain continuation (gpu-continue.txt) gives neither
    if (a.vit_steps or a.vit_fit_minutes or a.vit_from) and start == 0:
        if aux_targets is None:
            raise SystemExit('--vit-steps, --vit-fit-minutes and --vit-from need --aux-weight')
        if a.vit_from:
            # a finished stage 1 (its vision_stage1.pt): several stage-2 runs can share one
            st1 = torch.load(a.vit_from, map_location=device, weights_only=False)
            model.visual_encoder.load_state_dict(st1['visual_encoder'])
            model.aux_head.load_state_dict(st1['aux_head'])
            print(f'stage 1 loaded from {a.vit_from}', file=sys.stderr)
        else:
            pretrain_vision(model, data, aux_targets, a, device, log)
            if val is not None and val.objects is not None:
                held = vision_val_stats(model, val, colours, shapes, device)
                log.write(json.dumps({'vit_val_step': a.vit_steps, **{'val_' + k: v for k, v in held.items()}}) + '\n')
                log.flush()
                print(f"stage 1 held-out: colour {held.get('colour_acc', 0):.3f} shape {held.get('shape_acc', 0):.3f} "
                      f"box err {held.get('box_err', 0):.2f} bins", file=sys.stderr)
            torch.save({'visual_encoder': model.visual_encoder.state_dict(), 'aux_head': model.aux_head.state_dict()},
                       os.path.join(a.out, 'vision_stage1.pt'))
    if a.vit_only:
        log.close()
        print(f'stage 1 saved: {os.path.join(a.out, "vision_stage1.pt")}', file=sys.stderr)
        return
    order = ImageOrder(n_images, order_rng, object_counts(data) if a.object_curriculum else None, a.object_curriculum)
    # the data order is a function of the seed and the step (replayed on resume)
    for s in range(start):
        order.take(s, a.batch_images)
    model.train()
    t0 = time.time()
    avg = None
    step = start
    while step < plan['steps']:
        ids = order.take(step, a.batch_images)
        batch_rng = random.Random(a.seed * 1_000_003 + step)
        batches, aux = make_batch(model, data, ids, batch_rng, a.per_image, image_tokens, a.micro, aux_targets,
                                  attn_sup=sup_scorer, name_classes=name_classes, about=a.sup_about)
        lm, attn, name = loss_of(model, batches)
        loss = lm if aux is None else lm + a.aux_weight * aux
        if attn is not None and a.attn_sup:
            loss = loss + a.attn_sup * attn
        if name is not None:
            loss = loss + a.name_sup * name
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        v = lm.item()  # the language-model loss (comparable with and without --aux-weight)
        fitted = fit.after(step + 1)
        if fitted:
            plan['steps'] = steps = fitted
            write_args()
            print(f'fit: {fit.per_step * 1000:.0f} ms per step -> {steps} steps in {a.fit_minutes} min', file=sys.stderr)
        avg = v if avg is None else 0.98 * avg + 0.02 * v
        if (step + 1) % a.log_every == 0 or step == start or step + 1 == steps:
            el = time.time() - t0
            rate = (step + 1 - start) / el
            rec = {'step': step + 1, 'loss': round(v, 4), 'loss_avg': round(avg, 4), 'lr': sched.get_last_lr()[0], 'elapsed_s': round(el, 1), 's_per_step': round(1 / rate, 3)}
            if aux is not None:
                rec['aux_loss'] = round(aux.item(), 4)
            if attn is not None and a.attn_sup:
                rec['attn_loss'] = round(attn.item(), 4)
            if name is not None:
                rec['name_loss'] = round(name.item(), 4)
            log.write(json.dumps(rec) + '\n')
            log.flush()
            print(f"step {step + 1}/{steps} loss {v:.4f} (avg {avg:.4f}) lr {rec['lr']:.2e} {rec['s_per_step']} s/step eta {(steps - step - 1) / rate / 60:.1f} min", file=sys.stderr)
        stop = (a.stop_at and step + 1 >= a.stop_at) or (a.max_minutes and time.time() - t0 > a.max_minutes * 60)
        if (step + 1) % a.save_every == 0 or step + 1 == steps or stop:
            if val is not None:
                vl, acc = val_metrics(model, val, image_tokens, a.micro)
                log.write(json.dumps({'step': step + 1, 'val_loss': round(vl, 4), 'val_acc': acc}) + '\n')
                log.flush()
                print(f'step {step + 1}: held-out loss {vl:.4f}; teacher-forced accuracy {json.dumps(acc)}', file=sys.stderr)
            save_published(model, a, a.out, tokenizer_json)
            torch.save({'model': model.state_dict(), 'opt': opt.state_dict(), 'sched': sched.state_dict(), 'step': step + 1,
                        'torch_rng': torch.get_rng_state(), 'aux_classes': getattr(a, 'aux_classes', None)}, state_path)
        if stop and step + 1 < steps:
            print(f'stopped after step {step + 1} of {steps}: continue with --resume', file=sys.stderr)
            break
        step += 1
    log.close()
    print(f'saved {a.out}/eva_vit.pth, {a.out}/llama/, {a.out}/minigptv2_ckpt.pth', file=sys.stderr)


if __name__ == '__main__':
    main()
