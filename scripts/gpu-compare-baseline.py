#!/usr/bin/env python3
"""The baseline of scripts/gpu-compare.sh: what users would otherwise run, in PyTorch, at our package's shape.

Hugging Face transformers' LlamaForCausalLM (eager attention, generate() with its KV cache, greedy) when
transformers is installed, else a plain PyTorch Llama written here (the same computation: RMSNorm, rotary
attention with a KV cache, SwiGLU MLP); and an EVA ViT (pre-norm blocks, qkv with q/v biases, GELU MLP) for the
image, followed by MiniGPT-v2's 4-token concat and llama_proj. Random weights of the same shapes: only speed is
measured. Prints one JSON object:
  {"impl", "dtype", "device", "vision_ms", "ttft_ms", "prompt_tokens", "decode_tok_s", "batch8_tok_s", "gpu_mem_mb"}

  python3 scripts/gpu-compare-baseline.py --preset llama2-7b --layers 4 --vit-depth 4 --device cuda --dtype fp16
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    # the shapes of src/convert/random-checkpoints.ts
    "llama2-7b": dict(hidden=4096, heads=32, intermediate=11008, vocab=32000, vit_width=1408, vit_heads=16, vit_mlp=6144, image=448),
    "tiny": dict(hidden=256, heads=4, intermediate=688, vocab=512, vit_width=128, vit_heads=16, vit_mlp=558, image=448),
}
PATCH = 14


class VitBlock(nn.Module):
    def __init__(self, d, heads, mlp):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(d))
        self.v_bias = nn.Parameter(torch.zeros(d))
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        self.fc1 = nn.Linear(d, mlp)
        self.fc2 = nn.Linear(mlp, d)

    def forward(self, x):
        b, n, d = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(self.norm1(x), self.qkv.weight, bias).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = (q * (q.shape[-1] ** -0.5)) @ k.transpose(-2, -1)
        x = x + self.proj((att.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class Vision(nn.Module):
    """EVA ViT (patch_embed, cls token, pos_embed, blocks), ln_vision, then MiniGPT-v2's 4-concat and llama_proj."""

    def __init__(self, p, depth):
        super().__init__()
        d = p["vit_width"]
        grid = p["image"] // PATCH
        self.patch_embed = nn.Conv2d(3, d, PATCH, PATCH)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, d))
        self.blocks = nn.ModuleList(VitBlock(d, p["vit_heads"], p["vit_mlp"]) for _ in range(depth))
        self.ln_vision = nn.LayerNorm(d)
        self.llama_proj = nn.Linear(4 * d, p["hidden"])

    def forward(self, img):
        x = self.patch_embed(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        x = self.ln_vision(x)[:, 1:]
        b, n, d = x.shape
        return self.llama_proj(x.reshape(b, n // 4, 4 * d))


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        h = x.float()
        return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rotate_half(x):
    a, b = x.chunk(2, -1)
    return torch.cat([-b, a], -1)


class LlamaLayer(nn.Module):
    def __init__(self, h, heads, inter):
        super().__init__()
        self.heads = heads
        self.input_layernorm = RMSNorm(h)
        self.q_proj = nn.Linear(h, h, bias=False)
        self.k_proj = nn.Linear(h, h, bias=False)
        self.v_proj = nn.Linear(h, h, bias=False)
        self.o_proj = nn.Linear(h, h, bias=False)
        self.post_attention_layernorm = RMSNorm(h)
        self.gate_proj = nn.Linear(h, inter, bias=False)
        self.up_proj = nn.Linear(h, inter, bias=False)
        self.down_proj = nn.Linear(inter, h, bias=False)

    def forward(self, x, cos, sin, cache):
        b, n, h = x.shape
        hd = h // self.heads
        y = self.input_layernorm(x)
        q, k, v = (p(y).view(b, n, self.heads, hd).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            k = torch.cat([cache[0], k], 2)
            v = torch.cat([cache[1], v], 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        if n > 1:
            past = k.shape[2] - n
            mask = torch.full((n, k.shape[2]), float("-inf"), device=x.device).triu(past + 1)
            att = att + mask.to(att.dtype)
        x = x + self.o_proj((att.float().softmax(-1).to(q.dtype) @ v).transpose(1, 2).reshape(b, n, h))
        y = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(y)) * self.up_proj(y)), (k, v)


class PlainLlama(nn.Module):
    """A Llama decoder with a KV cache and greedy decoding (used when transformers is not installed)."""

    def __init__(self, p, layers):
        super().__init__()
        self.p = p
        self.embed_tokens = nn.Embedding(p["vocab"], p["hidden"])
        self.layers = nn.ModuleList(LlamaLayer(p["hidden"], p["heads"], p["intermediate"]) for _ in range(layers))
        self.norm = RMSNorm(p["hidden"])
        self.lm_head = nn.Linear(p["hidden"], p["vocab"], bias=False)

    def rope(self, start, n, device, dtype):
        hd = self.p["hidden"] // self.p["heads"]
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2, device=device).float() / hd))
        t = torch.arange(start, start + n, device=device).float()
        f = torch.outer(t, inv)
        emb = torch.cat([f, f], -1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def step(self, embeds, caches):
        start = 0 if caches[0] is None else caches[0][0].shape[2]
        cos, sin = self.rope(start, embeds.shape[1], embeds.device, embeds.dtype)
        x = embeds
        out = []
        for layer, c in zip(self.layers, caches):
            x, c2 = layer(x, cos, sin, c)
            out.append(c2)
        return self.lm_head(self.norm(x[:, -1:])), out

    @torch.no_grad()
    def generate(self, inputs_embeds, max_new_tokens):
        logits, caches = self.step(inputs_embeds, [None] * len(self.layers))
        ids = []
        for _ in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            ids.append(nxt)
            logits, caches = self.step(self.embed_tokens(nxt), caches)
        return torch.cat(ids, 1)


def build_llm(p, layers, dtype, device):
    try:
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(
            hidden_size=p["hidden"], intermediate_size=p["intermediate"], num_hidden_layers=layers, num_attention_heads=p["heads"],
            num_key_value_heads=p["heads"], vocab_size=p["vocab"], max_position_embeddings=4096,
        )
        try:
            cfg._attn_implementation = "eager"
        except Exception:
            pass
        model = LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()

        def generate(embeds, n):
            return model.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=device),
                                  max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True, pad_token_id=0)

        return "transformers", model.get_input_embeddings(), generate
    except ImportError:
        model = PlainLlama(p, layers).to(device=device, dtype=dtype).eval()
        return "torch", model.embed_tokens, model.generate


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(device, fn, reps):
    best = []
    out = None
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        best.append((time.perf_counter() - t0) * 1000)
    best.sort()
    return best[len(best) // 2], out


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="llama2-7b", choices=sorted(PRESETS))
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--vit-depth", type=int, default=39)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "fp32"])
    ap.add_argument("--text-tokens", type=int, default=44, help="prompt tokens besides the image's rows")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    p = PRESETS[a.preset]
    dtype = torch.float16 if a.dtype == "fp16" else torch.float32
    dev = a.device
    torch.manual_seed(0)
    vision = Vision(p, a.vit_depth).to(device=dev, dtype=dtype).eval()
    for prm in vision.parameters():
        nn.init.normal_(prm, std=0.02)
    impl, embed, generate = build_llm(p, a.layers, dtype, dev)
    image = torch.randn(1, 3, p["image"], p["image"], device=dev, dtype=dtype)
    text = torch.randint(3, p["vocab"], (1, a.text_tokens), device=dev)

    def prompt(batch=1):
        img = vision(image)
        emb = torch.cat([embed(text[:, :4]), img, embed(text[:, 4:])], 1)
        return emb.expand(batch, -1, -1).contiguous()

    vision(image)  # warm-up
    generate(prompt(), 2)
    vision_ms, _ = timed(dev, lambda: vision(image), a.reps)
    ttft_ms, _ = timed(dev, lambda: generate(prompt(), 1), a.reps)
    prompt_tokens = prompt().shape[1]
    # decoding: the time of N tokens minus the time of 1 (the prefill and first token), alternated in each rep
    def decode_rate(emb, batch):
        diffs = []
        for _ in range(a.reps):
            full, _ = timed(dev, lambda: generate(emb, a.new_tokens), 1)
            first, _ = timed(dev, lambda: generate(emb, 1), 1)
            diffs.append(full - first)
        diffs.sort()
        return batch * (a.new_tokens - 1) / max(1e-6, diffs[len(diffs) // 2] / 1000)

    decode_tok_s = decode_rate(prompt(), 1)
    batch_tok_s = decode_rate(prompt(a.batch), a.batch)
    mem = torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else None
    print(json.dumps({
        "impl": impl, "dtype": a.dtype, "device": dev, "vision_ms": round(vision_ms, 2), "ttft_ms": round(ttft_ms, 2),
        "prompt_tokens": prompt_tokens, "decode_tok_s": round(decode_tok_s, 2), "batch8_tok_s": round(batch_tok_s, 2),
        "gpu_mem_mb": round(mem, 1) if mem is not None else None,
    }))


if __name__ == "__main__":
    main()
