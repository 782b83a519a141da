"""What a draft head is trained to do, one batch at a time (`train.py` runs the loop).

    batch:   rows right-padded to [Bt, T], A anchors per row in [prompt_len - 1, len - 2]
    causal / dflash:  inputs [x_a, MASK, ..., MASK]; slot d (d >= 1) predicts depth d, the token at
                      a+d, against the teacher's distribution there: p_{a+d-1}. The anchor carries
                      no loss. "causal" also reveals, with probability `reveal_prob`, the first
                      r ~ U{1..B-2} tokens x_{a+1..a+r} instead of MASKs (no loss on them): what
                      parent-conditioned rescoring feeds the head.
    eagle:            inputs [x_a, ..., x_{a+B-1}] (teacher forcing); input j predicts depth j+1
                      against p_{a+j}.
    loss = sum_s w_{d(s)} l_s / sum_s w_{d(s)} over supervised slots s, predicting depth d(s):
           l_s = KL(p || q) = sum_v p_v (log p_v - log q_v)    ("kl", forward KL, temperature 1)
              or -log q(argmax_v p_v)                         ("ce", on the teacher's greedy token)
           w_d = exp(-(d - 1) / gamma), gamma = 0: w_d = 1    (the DFlash paper's position decay)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.utils.checkpoint import checkpoint

from .data import TokenData
from .frozen_target import teacher_forward
from .masks import block_mask
from .model import DraftHead

if TYPE_CHECKING:
    from .train import TrainConfig

LOSSES = ("kl", "ce")
VOCAB_CHUNK = 2048  # slots whose [chunk, V] logits are alive at once (`vocab_losses`)


def make_batch(data: TokenData, rows: list[int], cfg: TrainConfig, g: torch.Generator, pad_id: int, device) -> dict:
    """Rows right-padded to [Bt, T]; A anchors per row drawn from `g` in [prompt_len - 1, len - 2];
    for the causal head, a revealed prefix length per anchor (0: none)."""
    seqs = [data.row(s)[: cfg.max_len] for s in rows]
    lens = torch.tensor([len(s) for s in seqs])  # [Bt]
    plens = torch.tensor([int(data.prompt_lens[s]) for s in rows])  # [Bt]
    ids = torch.full((len(rows), int(lens.max())), pad_id, dtype=torch.int64)  # [Bt, T] right-padded
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
    attn = (torch.arange(ids.shape[1])[None] < lens[:, None]).long()
    lo, hi = plens - 1, lens - 2  # anchor range, inclusive
    u = torch.rand(len(rows), cfg.anchors, generator=g)
    anchors = lo[:, None] + (u * (hi - lo + 1)[:, None]).long()  # [Bt, A]
    if cfg.reveal_prob:
        r = torch.randint(1, max(2, cfg.block_size - 1), (len(rows), cfg.anchors), generator=g)
        reveal = torch.where(torch.rand(len(rows), cfg.anchors, generator=g) < cfg.reveal_prob, r, 0)
    else:
        reveal = torch.zeros_like(anchors)
    return {k: v.to(device) for k, v in dict(ids=ids, attn=attn, lens=lens, anchors=anchors, reveal=reveal).items()}


def _block_inputs(head: DraftHead, model: Any, b: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> x [Bt, A*B, H] inputs, pos [Bt, A*B], teacher index p [Bt, A, B], supervised [Bt, A, B] bool,
    target token at each slot's depth [Bt, A, B]."""
    c = head.config
    ids, lens, anchors, reveal = b["ids"], b["lens"], b["anchors"], b["reveal"]
    bt, a = anchors.shape
    d = torch.arange(c.block_size, device=ids.device)
    pos = anchors[:, :, None] + d  # [Bt, A, B]
    last = (lens - 1)[:, None, None]
    tok = ids.gather(1, pos.clamp(max=last).view(bt, -1)).view(bt, a, -1)  # [Bt, A, B] token at slot position
    x = model.get_input_embeddings()(tok).to(head.fuse.weight.dtype)  # [Bt, A, B, H]
    if c.uses_mask_slots:
        is_token = (d == 0) | (d <= reveal[:, :, None])  # anchor + revealed prefix
        x = torch.where(is_token[..., None], x, head.mask_embedding.to(x.dtype))
        p = pos - 1  # slot d predicts the token at a + d: teacher at a + d - 1
        supervised = ~is_token & (p <= last - 1)
        depth_token = tok
    else:
        p = pos  # input j predicts the token at a + j + 1: teacher at a + j
        supervised = p <= last - 1
        depth_token = ids.gather(1, (pos + 1).clamp(max=last).view(bt, -1)).view(bt, a, -1)
    return x.view(bt, a * c.block_size, -1), pos.view(bt, -1), p, supervised, depth_token


def slot_losses(log_q: torch.Tensor, log_p: torch.Tensor, loss: str) -> torch.Tensor:
    """log_q, log_p [S, V] (head, teacher) -> per-slot loss [S]: "kl" sum_v p_v (log p_v - log q_v),
    "ce" -log q(argmax_v p_v)."""
    if loss == "kl":
        return (log_p.exp() * (log_p - log_q)).sum(-1)
    return -log_q.gather(1, log_p.argmax(-1, keepdim=True)).squeeze(1)


def vocab_losses(
    h: torch.Tensor, teacher_h: torch.Tensor, lm_head: Any, loss: str, chunk: int = VOCAB_CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """h, teacher_h [S, H] (head, teacher) -> per-slot loss [S] (`slot_losses` of the two
    log-softmaxes over the vocabulary) and the head's rank-1 token [S], `chunk` slots at a time: a
    chunk's [chunk, V] logits live only inside it and are recomputed for the backward pass
    (activation checkpointing), so memory holds one chunk's logits, not all S of them (15k slots x
    a 49k vocabulary are 3 GB per fp32 copy). Each slot's values are those of the one-shot form."""
    losses, drafts = [], []
    for i in range(0, h.shape[0], chunk):
        per_slot, draft = checkpoint(_chunk_losses, h[i : i + chunk], teacher_h[i : i + chunk], lm_head, loss, use_reentrant=False)
        losses.append(per_slot)
        drafts.append(draft)
    empty = h.new_zeros(0, dtype=torch.float32), torch.zeros(0, dtype=torch.long, device=h.device)
    return (torch.cat(losses), torch.cat(drafts)) if losses else empty


def _chunk_losses(h: torch.Tensor, teacher_h: torch.Tensor, lm_head: Any, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    log_q = torch.log_softmax(lm_head(h).float(), dim=-1)  # [chunk, V]
    with torch.no_grad():
        log_p = torch.log_softmax(lm_head(teacher_h).float(), dim=-1)  # [chunk, V]
    return slot_losses(log_q, log_p, loss), log_q.detach().argmax(-1)


def depth_weighted_mean(per_slot: torch.Tensor, depth: torch.Tensor, gamma: float) -> torch.Tensor:
    """sum_s w_d(s) l_s / sum_s w_d(s), w_d = exp(-(d - 1) / gamma) (the DFlash paper's decay over
    the depth d >= 1 a slot predicts); gamma = 0: the plain mean."""
    if gamma == 0:
        return per_slot.mean()
    w = torch.exp(-(depth.float() - 1) / gamma)  # [S]
    return (w * per_slot).sum() / w.sum()


def head_loss(head: DraftHead, model: Any, b: dict, loss: str = "kl", gamma: float = 0.0) -> tuple[torch.Tensor, dict]:
    """The head's loss against the teacher over the supervised slots, weighted by depth, and chain
    statistics. loss "kl": forward KL(p || q); "ce": cross-entropy on the teacher's argmax,
    -log q(argmax p) (what greedy verification accepts)."""
    c = head.config
    ctx_hidden, final = teacher_forward(model, b["ids"], b["attn"], c.target_layers)  # [Bt,T,k,H], [Bt,T,H]
    bt, t = b["ids"].shape
    fused = head.fuse_context(ctx_hidden)  # [Bt, T, H]
    context = head.context_kv(fused, torch.arange(t, device=fused.device).expand(bt, t))
    x, pos, p, supervised, depth_token = _block_inputs(head, model, b)
    mask = block_mask(b["anchors"], c.block_size, t, c.causal)  # [Bt, A*B, T + A*B]
    h = head(x, pos, context, mask).view(*p.shape, -1)  # [Bt, A, B, H]
    with torch.no_grad():
        teacher_h = final.gather(1, p.clamp(0, t - 1).view(bt, -1, 1).expand(-1, -1, final.shape[-1]))
        slot = torch.arange(c.block_size, device=p.device).expand_as(p)  # [Bt, A, B]
        depth = (slot if c.uses_mask_slots else slot + 1)[supervised]  # [S]: the depth each slot predicts
    per_slot, draft = vocab_losses(h[supervised], teacher_h.view(*p.shape, -1)[supervised], model.get_output_embeddings(), loss)
    value = depth_weighted_mean(per_slot, depth, gamma)
    with torch.no_grad():  # chain acceptance: leading depths whose rank-1 draft is the answer's token
        hit = torch.zeros_like(supervised)
        hit[supervised] = draft == depth_token[supervised]
        if c.uses_mask_slots:
            hit = hit[:, :, 1:]  # depths 1 .. B-1 (slot 0 is the anchor)
        sup = supervised[:, :, 1:] if c.uses_mask_slots else supervised  # [Bt, A, D] as hit
        chain = hit.long().cumprod(-1)  # [Bt, A, D]: the rank-1 chain reaches depth d
        accepted = chain.sum(-1).float()  # [Bt, A]
        by_depth = {"acc_by_depth": (hit.sum((0, 1)) / sup.sum((0, 1)).clamp(min=1)).tolist(),  # rank-1 right given the true prefix
                    "reach_by_depth": chain.float().mean((0, 1)).tolist()}  # fmt: skip
    return value, {"tau_chain": 1.0 + accepted.mean().item(), "slots": int(supervised.sum()), **by_depth}
