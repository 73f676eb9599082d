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
from typing import NamedTuple, Optional

# OpenMP threads that spin while waiting cost a lot on a busy 2-core machine (measured: 2-5x slower steps).
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# --------------------------------------------------------------------------------------------------
# EVA ViT (key names as eva_vit_g.pth)
# --------------------------------------------------------------------------------------------------

class PatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class EvaAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class EvaBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = EvaAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * 4.3637))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class EvaViT(nn.Module):
    def __init__(self, image_size, patch, dim, depth, heads):
        super().__init__()
        self.patch_embed = PatchEmbed(patch, dim)
        grid = image_size // patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.blocks = nn.ModuleList([EvaBlock(dim, heads) for _ in range(depth)])
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_init_weights)

    def init_pos_embed_sincos(self, scale):
        """2-D sine-cosine position embeddings (half the channels for the row, half for the column, as MAE
        initialises them) times `scale`, for the patch tokens; still trained. Measured (stage 1, 120 steps of
        32 images): with the default 0.02-std init the patch features carry no position at all (box error
        26 bins, worse than predicting a constant), with sincos x1 16 bins, x4 7.7 bins; the position signal has to
        be as strong as the patch embedding's output (std ~0.6 per channel) to survive to the last block."""
        D = self.pos_embed.shape[-1]
        grid = int(round(math.sqrt(self.pos_embed.shape[1] - 1)))

        def one_axis(pos, d):
            omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float32) / (d / 2))
            ang = pos[:, None] * omega[None]
            return torch.cat((ang.sin(), ang.cos()), dim=1)

        ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32), indexing='ij')
        pe = torch.cat((one_axis(ys.reshape(-1), D // 2), one_axis(xs.reshape(-1), D // 2)), dim=1)
        with torch.no_grad():
            self.pos_embed[0, 1:] = pe * scale

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for b in self.blocks:
            x = b(x)
        return x


def _init_weights(m):
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------
# Llama with LoRA on q_proj / v_proj (key names as HF LlamaForCausalLM)
# --------------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class LoraLinear(nn.Module):
    """W x + (alpha / r) B A x; `weight` is the base weight, lora_A / lora_B as peft names them."""

    def __init__(self, dim_in, dim_out, r, alpha):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim_out, dim_in))
        nn.init.normal_(self.weight, std=0.02)
        self.lora_A = nn.Linear(dim_in, r, bias=False)
        self.lora_B = nn.Linear(r, dim_out, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / r

    def forward(self, x):
        return F.linear(x, self.weight) + self.lora_B(self.lora_A(x)) * self.scaling


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class LlamaAttention(nn.Module):
    def __init__(self, hidden, heads, r, alpha):
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.q_proj = LoraLinear(hidden, hidden, r, alpha)
        self.k_proj = nn.Linear(hidden, hidden, bias=False)
        self.v_proj = LoraLinear(hidden, hidden, r, alpha)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)
        self.keep_heads = []  # --attn-sup / --name-sup: these heads' attention weights are kept in `kept`, their
        self.kept = None      # outputs (before o_proj) in `kept_out`
        self.kept_out = None

    def forward(self, x, cos, sin, mask):
        B, L, H = x.shape
        shape = (B, L, self.heads, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim) + mask
        probs = scores.softmax(dim=-1)
        self.kept = probs[:, self.keep_heads] if self.keep_heads else None
        out = probs @ v
        self.kept_out = out[:, self.keep_heads] if self.keep_heads else None
        return self.o_proj(out.transpose(1, 2).reshape(B, L, H))


class LlamaMLP(nn.Module):
    def __init__(self, hidden, inter):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaLayer(nn.Module):
    def __init__(self, hidden, heads, inter, eps, r, alpha):
        super().__init__()
        self.self_attn = LlamaAttention(hidden, heads, r, alpha)
        self.mlp = LlamaMLP(hidden, inter)
        self.input_layernorm = RMSNorm(hidden, eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, vocab, hidden, layers, heads, inter, eps, r, alpha):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList([LlamaLayer(hidden, heads, inter, eps, r, alpha) for _ in range(layers)])
        self.norm = RMSNorm(hidden, eps)


class LlamaForCausalLM(nn.Module):
    def __init__(self, vocab, hidden, layers, heads, inter, eps, r, alpha, theta=10000.0):
        super().__init__()
        self.model = LlamaModel(vocab, hidden, layers, heads, inter, eps, r, alpha)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)
        self.head_dim = hidden // heads
        self.theta = theta
        for name, p in self.named_parameters():
            if name.endswith('lora_A.weight') or name.endswith('lora_B.weight') or p.dim() < 2:
                continue
            nn.init.normal_(p, std=0.02)

    def forward(self, embeds, pad_mask):
        B, L, _ = embeds.shape
        dev = embeds.device
        pos = torch.arange(L, dtype=torch.float32, device=dev)
        inv = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=dev) / self.head_dim))
        ang = torch.outer(pos, inv)
        ang = torch.cat((ang, ang), dim=-1)
        cos, sin = ang.cos()[None, None], ang.sin()[None, None]
        neg = torch.finfo(torch.float32).min
        causal = torch.full((L, L), neg, device=dev).triu(1)
        mask = causal[None, None] + (1.0 - pad_mask[:, None, None, :].float()) * neg
        mask = mask.clamp(min=neg)
        x = embeds
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.model.norm(x))


class MiniGPTv2(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.visual_encoder = EvaViT(a.image_size, 14, a.vit_width, a.vit_depth, a.vit_heads)
        self.vit_width = a.vit_width
        self.llama_proj = nn.Linear(a.vit_width * 4, a.hidden)
        self.llama_model = LlamaForCausalLM(a.vocab, a.hidden, a.layers, a.heads, a.intermediate, a.rms_eps, a.lora_r, a.lora_alpha)
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        self.register_buffer('mean', mean, persistent=False)
        self.register_buffer('std', std, persistent=False)

    def encode_img(self, u8, with_patches=False):
        """uint8 [B, S, S, 3] (already resized like the runtime) -> image embeds [B, N/4, hidden] (and the patch
        features [B, N, C] after ln_vision when `with_patches`)."""
        x = (u8.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
        h = self.visual_encoder(x)
        h = F.layer_norm(h, (self.vit_width,), eps=1e-5)  # ln_vision at its default init
        h = h[:, 1:, :]
        B, N, C = h.shape
        embeds = self.llama_proj(h.reshape(B, N // 4, C * 4))
        return (embeds, h) if with_patches else embeds


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------

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


def init_coordinate_tokens(model, tokenizer_json):
    """Gives the 101 grid tokens <0>..<100> embeddings and lm_head rows that vary smoothly with the number
    (sinusoids of it, at the scale of the default init): nearby coordinates start out similar instead of as
    101 unrelated symbols, which the model would otherwise have to discover from data."""
    vocab = json.loads(tokenizer_json)['model']['vocab']
    ids = {int(p[1:-1]): k for k, (p, _) in enumerate(vocab) if len(p) > 2 and p[0] == '<' and p[-1] == '>' and p[1:-1].isdigit()}
    if not ids:
        return 0
    emb = model.llama_model.model.embed_tokens.weight
    head = model.llama_model.lm_head.weight
    H = emb.shape[1]
    freqs = torch.pi / 100.0 * torch.logspace(0, math.log10(50.0), H // 2)
    with torch.no_grad():
        for v, k in ids.items():
            ang = v * freqs
            feat = torch.cat((ang.sin(), ang.cos())).to(emb.device)
            feat = feat / feat.norm() * (0.02 * math.sqrt(H))
            emb[k] = feat
            head[k] = feat
    return len(ids)


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


TASK_TAGS = ('[grounding]', '[refer]', '[detection]', '[identify]', '[vqa]', '[caption]')


class TaskScorer:
    """Teacher-forced scoring of one sample: its task (from the task tag of its last turn; '+' when multi-turn) and
    whether the argmax ids `got` at its target positions are right: every token equal, for `[refer]` the box of the
    argmax grid tokens at IoU > 0.5 as `minigpt eval` scores it."""

    def __init__(self, tokenizer_json):
        vocab = [v[0] for v in json.loads(tokenizer_json)['model']['vocab']]
        self.tag_of = {k: w[1:-1] for k, w in enumerate(vocab) if w in TASK_TAGS}
        self.inst = vocab.index('[INST]')
        self.grid_of = {k: int(w[1:-1]) for k, w in enumerate(vocab) if len(w) > 2 and w[0] == '<' and w[-1] == '>' and w[1:-1].isdigit()}

    def task(self, s):
        tags = [self.tag_of[t] for t in s['post'] if t in self.tag_of]
        return tags[-1] if tags else 'none'

    def score(self, s, got):
        task = self.task(s) + ('+' if self.inst in s['post'] else '')
        want = s['target']
        if task.startswith('refer'):
            wb = [self.grid_of[t] for t in want if t in self.grid_of]
            gb = [self.grid_of.get(g, -1) for g, t in zip(got, want) if t in self.grid_of]
            return task, len(wb) == 4 and min(gb) >= 0 and box_iou(wb, gb) > 0.5
        return task, got == want


def tally(hits, task, ok):
    h = hits.setdefault(task, [0, 0])
    h[0] += int(ok)
    h[1] += 1


def val_metrics(model, val, image_tokens, micro, max_images=256):
    """On a held-out prepared split (every sample of its first images): the mean target cross-entropy, and per task
    the teacher-forced accuracy (TaskScorer): the share of samples whose target is the argmax given the true prefix
    (what greedy decoding writes, as long as it has not gone wrong before). A cheap stand-in for converting and
    running `minigpt eval` between chunks of a run."""
    scorer = TaskScorer(val.tokenizer_json)
    model.eval()
    total, count, hits = 0.0, 0, {}
    with torch.no_grad():
        n = min(max_images, val.meta['images'])
        for j in range(0, n, 32):
            ids = list(range(j, min(n, j + 32)))
            for mb in make_batch(model, val, ids, random.Random(0), 1 << 30, image_tokens, micro, with_items=True)[0]:
                logits = model.llama_model(mb.x, mb.pad)
                total += float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), mb.y[:, 1:].reshape(-1), ignore_index=-100, reduction='sum'))
                count += mb.n_targets
                pred = logits.argmax(-1)
                for r, (length, _, s, n_prompt) in enumerate(mb.group):
                    tally(hits, *scorer.score(s, pred[r, n_prompt - 1:length - 1].tolist()))
    model.train()
    return total / max(1, count), {k: round(v[0] / v[1], 4) for k, v in sorted(hits.items())}


def box_iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union if union > 0 else 0.0


def target_loss_sum(model, x, pad, y):
    """Summed next-token cross-entropy of one micro-batch's target tokens (position t predicts t+1)."""
    logits = model.llama_model(x, pad)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), y[:, 1:].reshape(-1), ignore_index=-100, reduction='sum')


def attention_loss_sum(model, A):
    """--attn-sup: -log of the attention weight that each kept head (LlamaAttention.keep_heads) puts on the image
    tokens of the object the answer is about, summed over the answer positions of `[refer]` / `[identify]` samples
    (A from make_batch), and the number of terms. Training only: it teaches the language model WHERE to read before
    it has learnt what it would find there (measured: picking the one image token among many is what it learns
    slowest; see the README). Call right after the forward pass that filled `kept`."""
    valid = A.sum(-1) > 0  # [n, L]
    total, count = None, 0
    for layer in model.llama_model.model.layers:
        kept = layer.self_attn.kept
        if kept is None:
            continue
        mass = (kept * A[:, None]).sum(-1)  # [n, heads, L]
        terms = -torch.log(mass.clamp_min(1e-6)).masked_select(valid[:, None])
        total = terms.sum() if total is None else total + terms.sum()
        count += terms.numel()
    return total, count


def name_loss_sum(model, names):
    """--name-sup: each kept head's output (LlamaAttention.kept_out, before o_proj), through its own linear head
    (model.name_head), predicts the colour and the shape of the object the answer is about, at the answer positions
    of `[refer]` / `[identify]` samples (--sup-about: of every sample about one object; `names` from make_batch). Returns the summed cross-entropy (colour + shape,
    averaged) and the number of terms. Training only: --attn-sup makes these heads look at the object; this makes
    what they bring back from it name it (measured: without it, the colour is in the object's image tokens but not
    at the answer position; see the README). Call right after the forward pass that filled `kept_out`."""
    nc = len(model.name_classes[0])
    valid = names[..., 0] >= 0  # [n, L]
    total, count = None, 0
    for l, layer in enumerate(model.llama_model.model.layers):
        attn = layer.self_attn
        if attn.kept_out is None:
            continue
        for j, h in enumerate(attn.keep_heads):
            logits = model.name_head[f'{l}_{h}'](attn.kept_out[:, j])[valid]  # [terms, colours + shapes]
            t = names[valid]
            ce = F.cross_entropy(logits[:, :nc], t[:, 0], reduction='sum') + F.cross_entropy(logits[:, nc:], t[:, 1], reduction='sum')
            total = 0.5 * ce if total is None else total + 0.5 * ce
            count += int(t.shape[0])
    return total, count


def loss_of(model, batches):
    """Mean next-token cross-entropy over all target tokens of all micro-batches, and the mean attention loss
    (--attn-sup) and name loss (--name-sup) over the micro-batches that have such targets (else None)."""
    total, attn, name = None, None, None
    count = attn_count = name_count = 0
    for batch in batches:
        l = target_loss_sum(model, batch.x, batch.pad, batch.y)
        total = l if total is None else total + l
        count += batch.n_targets
        if batch.A is not None:
            al, n = attention_loss_sum(model, batch.A)
            if n:
                attn = al if attn is None else attn + al
                attn_count += n
        if batch.names is not None:
            nl, n = name_loss_sum(model, batch.names)
            if n:
                name = nl if name is None else name + nl
                name_count += n
    return (total / max(1, count), attn / attn_count if attn_count else None,
            name / name_count if name_count else None)


# --------------------------------------------------------------------------------------------------
# Saving in the published formats
# --------------------------------------------------------------------------------------------------

def save_published(model, a, out, tokenizer_json):
    os.makedirs(os.path.join(out, 'llama'), exist_ok=True)
    # .cpu(): files written from a GPU run must not record CUDA storage locations
    vit = {k: v.detach().cpu().clone().contiguous() for k, v in model.visual_encoder.state_dict().items()}
    torch.save(vit, os.path.join(out, 'eva_vit.pth'))

    llm = {}
    ckpt = {'llama_proj.weight': model.llama_proj.weight.detach().cpu().clone(), 'llama_proj.bias': model.llama_proj.bias.detach().cpu().clone()}
    for k, v in model.llama_model.state_dict().items():
        if '.lora_' in k:
            ckpt['llama_model.base_model.model.' + k] = v.detach().cpu().clone()
        else:
            llm[k] = v.detach().cpu().clone().contiguous()
    torch.save(llm, os.path.join(out, 'llama', 'pytorch_model.bin'))
    torch.save({'model': ckpt}, os.path.join(out, 'minigptv2_ckpt.pth'))
    config = {
        'architectures': ['LlamaForCausalLM'],
        'bos_token_id': 1,
        'eos_token_id': 2,
        'pad_token_id': 0,
        'hidden_act': 'silu',
        'hidden_size': a.hidden,
        'initializer_range': 0.02,
        'intermediate_size': a.intermediate,
        'max_position_embeddings': a.max_positions,
        'model_type': 'llama',
        'num_attention_heads': a.heads,
        'num_hidden_layers': a.layers,
        'num_key_value_heads': a.heads,
        'pretraining_tp': 1,
        'rms_norm_eps': a.rms_eps,
        'rope_scaling': None,
        'rope_theta': 10000.0,
        'tie_word_embeddings': False,
        'torch_dtype': 'float32',
        'transformers_version': '4.30.0',
        'use_cache': True,
        'vocab_size': a.vocab,
    }
    with open(os.path.join(out, 'llama', 'config.json'), 'w') as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out, 'llama', 'generation_config.json'), 'w') as f:
        json.dump({'bos_token_id': 1, 'eos_token_id': 2, 'pad_token_id': 0, 'transformers_version': '4.30.0'}, f, indent=2)
    with open(os.path.join(out, 'llama', 'tokenizer.json'), 'w') as f:
        f.write(tokenizer_json)


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------

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
