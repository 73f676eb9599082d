"""train.py's model: the MiniGPT-v2 architecture that its docstring describes, with the key names of the published
files, and the writer of those files (save_published). Import it through train.py, which sets the OpenMP wait
policy before torch loads."""
import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F


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
