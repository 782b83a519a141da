"""Training a draft head by self-distillation on the frozen target.

One step, for a batch of the target's own answers (prompt + greedy answer, `data.py`):
    teacher forward (no grad): context hidden [Bt, T, k, H], next-token log-probs log p_t
    A anchors per sequence, a in [prompt_len - 1, len - 2]; anchor a opens a block of B inputs
    at positions a .. a+B-1 that sees the context t < a (the anchor's own hidden is not known).
    causal / dflash:  inputs [x_a, MASK, ..., MASK]; slot d (d >= 1) predicts depth d, the token at
                      a+d, against the teacher's distribution there:  p_{a+d-1}.
                      The anchor carries no loss. "causal" also reveals, with probability
                      `reveal_prob`, the first r ~ U{1..B-2} tokens x_{a+1..a+r} instead of MASKs
                      (no loss on them): what parent-conditioned rescoring feeds the head.
    eagle:            inputs [x_a, ..., x_{a+B-1}] (teacher forcing); input j predicts depth j+1
                      against p_{a+j}.
    loss = mean over supervised slots of KL(p || q) = sum_v p_v (log p_v - log q_v)
           (forward KL, temperature 1, uniform weight over positions)

Checkpoints (`head.safetensors` + `head.json`) and a resumable `train_state.pt` go to `out_dir`
every `save_every` steps; the step's batch and anchors are drawn from a generator seeded by
(seed, step), so a resumed run draws what the uninterrupted run would have drawn.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ...core.errors import CheckpointError, InputError
from .checkpoint import save_head
from .data import TokenData, encode_chat, generate_answers, read_questions
from .frozen_target import eos_ids, hf_identity, load_hf_target, teacher_forward
from .masks import block_mask
from .model import DraftHead, HeadConfig
from .options import MAX_BLOCK, MAX_LAYERS

EVAL_SEED = 12345


TRAIN_LIMITS = (  # (field, lowest, highest): a typo must be an error, not an allocation
    ("steps", 1, 10_000_000), ("batch_size", 1, 4096), ("anchors", 1, 4096), ("layers", 1, MAX_LAYERS),
    ("block_size", 2, MAX_BLOCK), ("max_len", 2, 1 << 20), ("eval_rows", 0, 1 << 20),
    ("save_every", 1, 10_000_000), ("log_every", 1, 10_000_000),
)  # fmt: skip


@dataclass
class TrainConfig:
    kind: str = "causal"  # "causal" | "dflash" | "eagle"
    steps: int | None = 2000  # None: as many as `minutes` allows
    minutes: float | None = None  # wall-clock limit; stops at whichever of steps/minutes comes first
    batch_size: int = 8  # sequences per step
    anchors: int = 32  # blocks per sequence
    layers: int = 1  # head decoder layers
    block_size: int = 16
    target_layers: tuple[int, ...] | None = None  # default: evenly spaced 1 .. N-3, one per head layer
    lr: float = 6e-4
    warmup: float = 0.05  # fraction of training
    weight_decay: float = 0.01
    reveal_prob: float | None = None  # default 0.5 for "causal", 0 otherwise
    max_len: int = 1024  # tokens per sequence (longer rows are cut)
    eval_rows: int = 64  # the last rows of the data are held out for evaluation (at most a fifth)
    save_every: int = 500
    log_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("causal", "dflash", "eagle"):
            raise InputError(f"head kind must be causal, dflash or eagle, got {self.kind!r}")
        if self.reveal_prob is None:
            self.reveal_prob = 0.5 if self.kind == "causal" else 0.0
        if self.reveal_prob and self.kind != "causal":
            raise InputError("reveal_prob > 0 only makes sense for the causal head")
        if self.steps is None and not self.minutes:
            raise InputError("training needs a number of steps or a time limit (minutes)")
        for name, low, high in TRAIN_LIMITS:  # before anything is allocated
            value = getattr(self, name)
            if value is not None and (type(value) is not int or not low <= value <= high):
                raise InputError(f"{name.replace('_', '-')} must be an integer in [{low}, {high}], got {value!r}")
        for name in ("lr", "warmup", "weight_decay", "minutes"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise InputError(f"{name.replace('_', '-')} must be a finite number >= 0, got {value!r}")
        self.target_layers = tuple(self.target_layers) if self.target_layers else None


# ------------------------------------------------------------------------------------ batches
def _usable_rows(data: TokenData, max_len: int) -> list[int]:
    """Rows with at least 2 answer tokens inside `max_len` (an anchor needs a next token)."""
    lengths = (data.offsets[1:] - data.offsets[:-1]).clamp(max=max_len)
    return [s for s in range(len(data)) if int(data.prompt_lens[s]) + 2 <= int(lengths[s])]


def _batch(data: TokenData, rows: list[int], cfg: TrainConfig, g: torch.Generator, pad_id: int, device) -> dict:
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


def head_loss(head: DraftHead, model: Any, b: dict) -> tuple[torch.Tensor, dict]:
    """Forward KL of the head's per-slot distributions from the teacher's, and chain statistics."""
    c = head.config
    ctx_hidden, final = teacher_forward(model, b["ids"], b["attn"], c.target_layers)  # [Bt,T,k,H], [Bt,T,H]
    bt, t = b["ids"].shape
    fused = head.fuse_context(ctx_hidden)  # [Bt, T, H]
    context = head.context_kv(fused, torch.arange(t, device=fused.device).expand(bt, t))
    x, pos, p, supervised, depth_token = _block_inputs(head, model, b)
    mask = block_mask(b["anchors"], c.block_size, t, c.causal)  # [Bt, A*B, T + A*B]
    h = head(x, pos, context, mask).view(*p.shape, -1)  # [Bt, A, B, H]
    lm_head = model.get_output_embeddings()
    log_q = torch.log_softmax(lm_head(h[supervised]).float(), dim=-1)  # [S, V]
    with torch.no_grad():
        teacher_h = final.gather(1, p.clamp(0, t - 1).view(bt, -1, 1).expand(-1, -1, final.shape[-1]))
        log_p = torch.log_softmax(lm_head(teacher_h.view(*p.shape, -1)[supervised]).float(), dim=-1)  # [S, V]
    loss = (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    with torch.no_grad():  # chain acceptance: leading depths whose rank-1 draft is the answer's token
        hit = torch.zeros_like(supervised)
        hit[supervised] = log_q.argmax(-1) == depth_token[supervised]
        if c.uses_mask_slots:
            hit = hit[:, :, 1:]  # depths 1 .. B-1 (slot 0 is the anchor)
        accepted = hit.long().cumprod(-1).sum(-1).float()  # [Bt, A]
    return loss, {"tau_chain": 1.0 + accepted.mean().item(), "slots": int(supervised.sum())}


# ------------------------------------------------------------------------------------ loop
def _lr(cfg: TrainConfig, progress: float) -> float:
    """Linear warmup, then cosine decay to 10% of the peak; progress in [0, 1]."""
    warm = min(1.0, progress / cfg.warmup) if cfg.warmup > 0 else 1.0
    return cfg.lr * warm * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))


@torch.no_grad()
def evaluate(head: DraftHead, model: Any, data: TokenData, rows: list[int], cfg: TrainConfig, pad_id: int) -> dict:
    """Held-out loss and chain tau with fixed anchors and no reveal (same for every head kind)."""
    if not rows:
        return {}
    device = next(model.parameters()).device
    plain = TrainConfig(**{**asdict(cfg), "reveal_prob": 0.0})
    g = torch.Generator().manual_seed(EVAL_SEED)
    losses, taus = [], []
    for i in range(0, len(rows), cfg.batch_size):
        with _autocast(device):
            loss, stats = head_loss(head, model, _batch(data, rows[i : i + cfg.batch_size], plain, g, pad_id, device))
        losses.append(loss.item())
        taus.append(stats["tau_chain"])
    return {"eval_kl": sum(losses) / len(losses), "eval_tau_chain": sum(taus) / len(taus)}


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


STATE_KEYS = ("head", "optim", "step", "elapsed", "config")


def load_train_state(path: Path, device: torch.device) -> dict:
    """A resumable training state, read with `weights_only=True`: a pickle can run any code when
    unpickled, so only tensors and plain containers are accepted. -> one-line CheckpointError."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(
            f"{path} is not a training state that can be loaded safely ({type(e).__name__}: {first[:120]}); "
            "delete it to start over, or pass another --out"
        ) from None
    if not (isinstance(state, dict) and all(k in state for k in STATE_KEYS) and isinstance(state["config"], dict)):
        raise CheckpointError(f"{path} is not a training state (expected a dict with {', '.join(STATE_KEYS)}); delete it to start over")
    return state


def train(
    model: Any,
    data: TokenData,
    out_dir: str | Path,
    cfg: TrainConfig,
    identity: dict[str, Any],
    pad_id: int = 0,
    resume: bool = True,
    progress: bool = True,
    until: int | None = None,
) -> dict:
    """Train one head on `data` (answers of `model`); returns a summary (also in head.json's `extra`).
    `until` stops after that many steps as an interruption would (the schedule still follows
    `cfg.steps`); a later call with `resume` continues from the saved state."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    torch.manual_seed(cfg.seed)
    config = HeadConfig.for_target(
        cfg.kind, identity["hidden_size"], identity["num_kv_heads"], identity["head_dim"], identity["num_target_layers"],
        layers=cfg.layers, target_layers=cfg.target_layers, block_size=cfg.block_size,
        target_name=identity["target_name"], target_fingerprint=identity["target_fingerprint"],
        vocab_size=identity["vocab_size"],
    )  # fmt: skip
    head = DraftHead(config).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    usable = _usable_rows(data, cfg.max_len)
    held_out = min(cfg.eval_rows, len(usable) // 5)  # never more than a fifth of the data
    eval_rows, train_rows = usable[len(usable) - held_out :], usable[: len(usable) - held_out]
    if not train_rows:
        raise InputError(f"no training rows: {len(data)} answers, {len(usable)} usable, {held_out} held out")

    step, elapsed, before = 0, 0.0, None
    state_path = out_dir / "train_state.pt"
    if resume and state_path.is_file():
        state = load_train_state(state_path, device)
        if state["config"].get("kind") != cfg.kind:
            raise InputError(f"{state_path} belongs to a {state['config'].get('kind')} run; use another out_dir")
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optim"])
        step, elapsed, before = state["step"], state["elapsed"], state.get("before")
    if before is None:
        before = evaluate(head, model, data, eval_rows, cfg, pad_id)

    def checkpoint() -> None:
        save_head(head, out_dir)
        blob = {"head": head.state_dict(), "optim": opt.state_dict(), "step": step, "elapsed": elapsed,
                "before": before, "config": asdict(cfg) | {"target_layers": list(cfg.target_layers or [])}}  # fmt: skip
        torch.save(blob, out_dir / "train_state.pt.tmp")
        (out_dir / "train_state.pt.tmp").replace(state_path)

    limit = cfg.minutes * 60 if cfg.minutes else None
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.kind}", unit="step", disable=not progress)
    log = (out_dir / "log.jsonl").open("a")
    start = time.monotonic() - elapsed
    last = min(cfg.steps or math.inf, until or math.inf)
    while step < last and (limit is None or elapsed < limit):
        frac = max(step / cfg.steps if cfg.steps else 0.0, elapsed / limit if limit else 0.0)
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, frac)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        rows = [train_rows[i] for i in torch.randint(len(train_rows), (cfg.batch_size,), generator=g).tolist()]
        with _autocast(device):
            loss, stats = head_loss(head, model, _batch(data, rows, cfg, g, pad_id, device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        step += 1
        elapsed = time.monotonic() - start
        bar.update(1)
        if step % cfg.log_every == 0 or step == 1:
            bar.set_postfix(kl=f"{loss.item():.3f}", tau=f"{stats['tau_chain']:.2f}")
            log.write(json.dumps({"step": step, "kl": loss.item(), "lr": _lr(cfg, frac), **stats, "elapsed": elapsed}) + "\n")
            log.flush()
        if step % cfg.save_every == 0:
            checkpoint()
    bar.close()
    after = evaluate(head, model, data, eval_rows, cfg, pad_id)
    summary = {"kind": cfg.kind, "steps": step, "seconds": round(elapsed, 1), "parameters": head.num_parameters(),
               "train_rows": len(train_rows), "eval_rows": len(eval_rows), "before": before, "after": after,
               "config": asdict(cfg) | {"target_layers": list(config.target_layers)}}  # fmt: skip
    head.config.extra = {"training": summary, "data": dict(data.meta)}
    checkpoint()
    log.write(json.dumps({"summary": summary}) + "\n")
    log.close()
    return summary


# ------------------------------------------------------------------------------------ entry points
def prepare_data(
    model: Any, tokenizer: Any, prompts_path: str | Path, data_path: str | Path, identity: dict[str, Any],
    max_new_tokens: int = 256, max_prompts: int | None = None, batch_size: int = 64, time_limit_s: float | None = None,
) -> TokenData:  # fmt: skip
    """Reuse `data_path` if it holds this target's answers, else generate and save them."""
    data_path = Path(data_path)
    if data_path.is_file():
        data = TokenData.load(data_path)
        if data.meta.get("target_fingerprint") != identity["target_fingerprint"]:
            raise InputError(f"{data_path} holds answers of another target; delete it or pick another data path")
        return data
    questions = read_questions(prompts_path, max_prompts)
    meta = {"target_name": identity["target_name"], "target_fingerprint": identity["target_fingerprint"],
            "prompts": Path(prompts_path).name, "max_new_tokens": str(max_new_tokens)}  # fmt: skip
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids(model, tokenizer)[0]
    data = generate_answers(
        model, encode_chat(tokenizer, questions), eos_ids(model, tokenizer), pad,
        max_new_tokens=max_new_tokens, batch_size=batch_size, time_limit_s=time_limit_s, meta=meta,
    )  # fmt: skip
    data.save(data_path)
    return data


def train_head(
    target_path: str | Path,
    prompts_path: str | Path,
    out_dir: str | Path,
    kind: str = "causal",
    steps: int = 2000,
    *,
    data_path: str | Path | None = None,
    max_new_tokens: int = 256,
    max_prompts: int | None = None,
    device: str | None = None,
    resume: bool = True,
    **train_options: Any,
) -> dict:
    """Self-distill `target_path` (HF folder or .gguf) on `prompts_path` and train one head into
    `out_dir`. The answers are saved to `data_path` (default out_dir/answers.safetensors) and reused."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, tokenizer = load_hf_target(target_path, dev, torch.bfloat16 if dev.type == "cuda" else torch.float32)
    identity = hf_identity(model, Path(target_path).stem if Path(target_path).suffix == ".gguf" else Path(target_path).name)
    data = prepare_data(model, tokenizer, prompts_path, data_path or Path(out_dir) / "answers.safetensors", identity,
                        max_new_tokens=max_new_tokens, max_prompts=max_prompts)  # fmt: skip
    cfg = TrainConfig(kind=kind, steps=steps, **train_options)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return train(model, data, out_dir, cfg, identity, pad_id=pad, resume=resume)


def main(argv: list[str] | None = None, formatter_class: type[argparse.HelpFormatter] = argparse.HelpFormatter) -> int:
    """`jetspec train-head`; the CLI passes its help formatter (which shows the defaults)."""
    ap = argparse.ArgumentParser(prog="jetspec train-head", description=train_head.__doc__, formatter_class=formatter_class)
    ap.add_argument("--target", required=True, help="Hugging Face folder (or .gguf file) of the frozen target")
    ap.add_argument("--prompts", required=True, help="training prompts, .jsonl(.gz)")
    ap.add_argument("--out", required=True, help="output folder (checkpoint, training state, answers)")
    ap.add_argument("--kind", default="causal", choices=["causal", "dflash", "eagle"], help="which head to train")
    ap.add_argument("--steps", type=int, default=2000, help="optimizer steps")
    ap.add_argument("--minutes", type=float, default=None, help="stop after this long (default: no time limit)")
    ap.add_argument("--data", default=None, help="answers file to reuse/create (default: OUT/answers.safetensors)")
    ap.add_argument("--layers", type=int, default=1, help="head decoder layers")
    ap.add_argument("--block-size", type=int, default=16, help="inputs per block, the draft depth trained")
    ap.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    ap.add_argument("--anchors", type=int, default=32, help="blocks per sequence")
    ap.add_argument("--lr", type=float, default=6e-4, help="peak learning rate")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="length of each self-distilled answer")
    ap.add_argument("--max-prompts", type=int, default=None, help="use at most this many prompts (default: all)")
    ap.add_argument("--seed", type=int, default=0, help="random seed")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    a = ap.parse_args(argv)
    summary = train_head(
        a.target, a.prompts, a.out, a.kind, a.steps, data_path=a.data, max_new_tokens=a.max_new_tokens,
        max_prompts=a.max_prompts, device=a.device, minutes=a.minutes, layers=a.layers, block_size=a.block_size,
        batch_size=a.batch_size, anchors=a.anchors, lr=a.lr, seed=a.seed,
    )  # fmt: skip
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
