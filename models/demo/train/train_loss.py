"""Stage 2's losses (the language model's, --attn-sup's and --name-sup's) and its held-out metrics (val_metrics).
Import it through train.py, which sets the OpenMP wait policy before torch loads."""
import json
import random

import torch
import torch.nn.functional as F

from train_data import box_iou, make_batch


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
