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
    loss = the depth-weighted forward KL (or cross-entropy on the teacher's argmax) over the
           supervised slots: `objective.py`

Runs accumulate across calls (the GPU is lent for minutes at a time). Checkpoints (`head.safetensors`
+ `head.json`) and a resumable `train_state.pt` (weights, optimizer, step, RNG, the runs so far) go
to `out_dir` every `save_every` steps and when a call stops. The data cursor is the step: step s
trains on positions s*Bt .. s*Bt+Bt-1 of a stream that walks a fresh seeded permutation of the
training rows each epoch, with anchors from a generator seeded by (seed, step), so a resumed run
draws what the uninterrupted run would have drawn. `steps` is the run's horizon (the learning-rate
schedule); `minutes` is one call's budget, checked after each step (when `steps` is None, the
horizon of a one-call run).
`out_dir/log.jsonl` holds training rows, validation rows (every `eval_every` steps: held-out KL,
chain τ, rank-1 accuracy and chain reach by depth) and one row per call (steps, minutes, device);
`out_dir/curves.png` plots them (`curves.py`).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ...core.errors import CheckpointError, InputError
from ..lookup_fit import fit_answers
from .calibration import FILE as HEAD_RATES, weights_digest
from .calibration_fit import calibrate
from .checkpoint import CALIBRATION, WEIGHTS, load_head, save_head
from .curves import write_curves
from .corpus import load_corpus
from .data import TokenData, encode_chat, generate_answers, read_questions
from .frozen_target import eos_ids, hf_identity, load_hf_target
from .model import DraftHead, HeadConfig
from .objective import LOSSES, head_loss, make_batch
from .rows import rows_for_step, split_rows
from .options import MAX_BLOCK, MAX_LAYERS, HeadOptions

EVAL_SEED = 12345
LOOKUP_ROWS = 2000  # greedy answers the lookup calibration written beside a trained head is measured on


TRAIN_LIMITS = (  # (field, lowest, highest): a typo must be an error, not an allocation
    ("steps", 1, 10_000_000), ("batch_size", 1, 4096), ("anchors", 1, 4096), ("layers", 1, MAX_LAYERS),
    ("block_size", 2, MAX_BLOCK), ("max_len", 2, 1 << 20), ("eval_rows", 0, 1 << 20),
    ("save_every", 1, 10_000_000), ("log_every", 1, 10_000_000), ("eval_every", 0, 10_000_000),
)  # fmt: skip


@dataclass
class TrainConfig:
    kind: str = "causal"  # "causal" | "dflash" | "eagle"
    steps: int | None = 2000  # the run's total steps, over all calls; None: as many as `minutes` allows
    minutes: float | None = None  # this call's wall-clock budget; stops at whichever of steps/minutes comes first
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
    eval_rows: int = 64  # held-out rows evaluated (a corpus: its held-out questions; else the last rows, at most a fifth)
    eval_every: int = 0  # steps between validations (0: only at the start and the end of a call)
    save_every: int = 500
    log_every: int = 50
    seed: int = 0
    loss: str = "kl"  # "kl": forward KL to the teacher; "ce": cross-entropy on its argmax (objective.py)
    gamma: float = 0.0  # per-depth loss weight exp(-(d - 1) / gamma); 0: uniform
    intermediate_size: int | None = None  # head MLP width; default 8/3 H (HeadConfig.for_target)
    init: str | None = None  # a head folder to start from (same architecture and target): weights only

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
        if self.loss not in LOSSES:
            raise InputError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.intermediate_size is not None and (type(self.intermediate_size) is not int or not 16 <= self.intermediate_size <= 1 << 17):
            raise InputError(f"intermediate-size must be an integer in [16, {1 << 17}], got {self.intermediate_size!r}")
        for name in ("lr", "warmup", "weight_decay", "minutes", "gamma"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise InputError(f"{name.replace('_', '-')} must be a finite number >= 0, got {value!r}")
        self.target_layers = tuple(self.target_layers) if self.target_layers else None


def _lr(cfg: TrainConfig, progress: float) -> float:
    """Linear warmup, then cosine decay to 10% of the peak; progress in [0, 1]."""
    warm = min(1.0, progress / cfg.warmup) if cfg.warmup > 0 else 1.0
    return cfg.lr * warm * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))


@torch.no_grad()
def evaluate(head: DraftHead, model: Any, data: TokenData, rows: list[int], cfg: TrainConfig, pad_id: int) -> dict:
    """Held-out forward KL (unweighted, whatever the training loss: one yardstick for every recipe)
    and chain tau, with fixed anchors and no reveal (same for every head kind)."""
    if not rows:
        return {}
    device = next(model.parameters()).device
    plain = TrainConfig(**{**asdict(cfg), "reveal_prob": 0.0})
    g = torch.Generator().manual_seed(EVAL_SEED)
    losses, taus, acc, reach = [], [], [], []
    for i in range(0, len(rows), cfg.batch_size):
        with _autocast(device):
            loss, stats = head_loss(head, model, make_batch(data, rows[i : i + cfg.batch_size], plain, g, pad_id, device))
        losses.append(loss.item())
        taus.append(stats["tau_chain"])
        acc.append(stats["acc_by_depth"])
        reach.append(stats["reach_by_depth"])
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731  (batches of equal weight)
    return {"eval_kl": mean(losses), "eval_tau_chain": mean(taus), "eval_acc_by_depth": [round(mean(d), 4) for d in zip(*acc)],
            "eval_reach_by_depth": [round(mean(d), 4) for d in zip(*reach)]}  # fmt: skip


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


STATE_KEYS = ("head", "optim", "step", "elapsed", "config")  # also: before, rng, cuda_rng, runs, data_rows


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
    """Train one head on `data` (answers of `model`), or go on with the run saved in `out_dir`;
    returns a summary (also in head.json's `extra`). `until` stops after that many steps as an
    interruption would (the schedule still follows `cfg.steps`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    call_start = time.monotonic()
    torch.manual_seed(cfg.seed)
    config = HeadConfig.for_target(
        cfg.kind, identity["hidden_size"], identity["num_kv_heads"], identity["head_dim"], identity["num_target_layers"],
        layers=cfg.layers, target_layers=cfg.target_layers, block_size=cfg.block_size,
        intermediate_size=cfg.intermediate_size, target_name=identity["target_name"], target_fingerprint=identity["target_fingerprint"],
        vocab_size=identity["vocab_size"],
    )  # fmt: skip
    if cfg.target_layers and not all(0 <= layer < identity["num_target_layers"] for layer in cfg.target_layers):
        raise InputError(f"target-layers {list(cfg.target_layers)} must lie in [0, {identity['num_target_layers']}): "
                         f"the target has {identity['num_target_layers']} layers")
    head = DraftHead(config).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)

    step, elapsed, before, runs, data_rows = 0, 0.0, None, [], len(data)
    state_path = out_dir / "train_state.pt"
    init = warm_start(head, cfg.init) if cfg.init else None  # a resumed run's state overwrites the weights below
    if resume and state_path.is_file():
        state = load_train_state(state_path, device)
        if state["config"].get("kind") != cfg.kind:
            raise InputError(f"{state_path} belongs to a {state['config'].get('kind')} run; use another out_dir")
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["optim"])
        step, elapsed, before = state["step"], state["elapsed"], state.get("before")
        runs, data_rows = list(state.get("runs", [])), int(state.get("data_rows", len(data)))
        if "rng" in state:
            torch.set_rng_state(state["rng"].cpu())
        if state.get("cuda_rng") is not None and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
        if data_rows > len(data):
            raise InputError(f"{out_dir} trains on {data_rows} rows, the data now holds {len(data)}: resume with the data it started on")
    if data_rows < len(data):  # a corpus that grew: this run keeps its rows (the cursor would move otherwise)
        print(f"train-head: the data holds {len(data)} rows; this run goes on with its first {data_rows}", file=sys.stderr)
        data = TokenData(data.tokens, data.offsets[: data_rows + 1], data.prompt_lens[:data_rows], data.meta,
                         {k: v[:data_rows] for k, v in data.columns.items()})  # fmt: skip
    train_rows, eval_rows = split_rows(data, cfg.max_len, cfg.eval_rows)
    if not train_rows:
        raise InputError(f"no training rows: {len(data)} answers, {len(eval_rows)} held out, none usable for training")
    log = (out_dir / "log.jsonl").open("a")
    write = lambda row: (log.write(json.dumps(row) + "\n"), log.flush())  # noqa: E731

    validated: dict[int, dict] = {}  # step -> validation (at most one per step)

    def validate() -> dict:
        if step not in validated:
            validated[step] = evaluate(head, model, data, eval_rows, cfg, pad_id)
            if validated[step]:
                write({"step": step, "eval": validated[step]})
                plot()
        return validated[step]

    def plot() -> None:
        try:
            write_curves(out_dir / "log.jsonl", out_dir / "curves.png", f"{cfg.kind} head")
        except ImportError:  # matplotlib is optional
            pass

    if before is None:
        before = validate()
    first_step = step

    def checkpoint() -> None:
        save_head(head, out_dir)
        blob = {"head": head.state_dict(), "optim": opt.state_dict(), "step": step, "elapsed": elapsed,
                "before": before, "config": asdict(cfg) | {"target_layers": list(cfg.target_layers or [])},
                "rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "runs": runs, "data_rows": data_rows}  # fmt: skip
        torch.save(blob, out_dir / "train_state.pt.tmp")
        (out_dir / "train_state.pt.tmp").replace(state_path)

    limit = cfg.minutes * 60 if cfg.minutes else None
    start = time.monotonic() - elapsed

    def out_of_time() -> bool:
        if limit is None:
            return False
        # a run with a step horizon: `minutes` is this call's budget; else it is the whole run's horizon
        return (time.monotonic() - call_start if cfg.steps else elapsed) >= limit

    tty = sys.stderr.isatty()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.kind}", unit="step", disable=not progress,
               mininterval=0.5 if tty else 30)  # fmt: skip
    last = min(cfg.steps or math.inf, until or math.inf)
    while step < last and (step == first_step or not out_of_time()):  # a call always advances the run
        frac = max(step / cfg.steps if cfg.steps else 0.0, elapsed / limit if limit and not cfg.steps else 0.0)
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, frac)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        rows = rows_for_step(train_rows, cfg.batch_size, cfg.seed, step)
        with _autocast(device):
            loss, stats = head_loss(head, model, make_batch(data, rows, cfg, g, pad_id, device), cfg.loss, cfg.gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        step += 1
        elapsed = time.monotonic() - start
        bar.update(1)
        if step % cfg.log_every == 0 or step == 1:
            bar.set_postfix(kl=f"{loss.item():.3f}", tau=f"{stats['tau_chain']:.2f}")
            write({"step": step, "kl": loss.item(), "lr": _lr(cfg, frac), "tau_chain": stats["tau_chain"],
                   "slots": stats["slots"], "elapsed": elapsed})  # fmt: skip
        if cfg.eval_every and step % cfg.eval_every == 0:
            validate()
        if step % cfg.save_every == 0:
            checkpoint()
    bar.close()
    stopped = "steps" if step >= (cfg.steps or math.inf) else "until" if until and step >= until else "minutes"
    after = validate()
    call_minutes = (time.monotonic() - call_start) / 60
    runs.append({"run": len(runs) + 1, "from_step": first_step, "to_step": step, "minutes": round(call_minutes, 2),
                 "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device), "stopped": stopped,
                 "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")})  # fmt: skip  (the target's dtype; the head trains under its autocast)
    total_minutes = round(sum(r["minutes"] for r in runs), 2)
    summary = {"kind": cfg.kind, "steps": step, "seconds": round(elapsed, 1), "parameters": head.num_parameters(),
               "train_rows": len(train_rows), "eval_rows": len(eval_rows), "before": before, "after": after,
               "runs": len(runs), "minutes_total": total_minutes, "init": init,
               "config": asdict(cfg) | {"target_layers": list(config.target_layers)}}  # fmt: skip
    head.config.extra = {"training": summary, "data": dict(data.meta)}
    checkpoint()
    write({"run": runs[-1], "steps_total": step, "minutes_total": total_minutes})
    write({"summary": summary})
    log.close()
    plot()
    return summary


def warm_start(head: DraftHead, folder: str | Path) -> dict:
    """Load into `head` the weights of the head saved in `folder`, which must have this run's
    architecture and target (every HeadConfig field but its training record); the optimizer and
    the schedule start afresh. -> where the weights come from and how long they had trained, for
    the new head's record (a head trained over several runs, when a run's state could not travel):
    the saved head's own `init` nests inside, and steps_all = its steps + its init's steps_all, the
    steps behind the weights over the whole chain of warm starts."""
    start = load_head(folder)
    mine, theirs = asdict(head.config), asdict(start.config)
    differ = [k for k in mine if k != "extra" and mine[k] != theirs[k]]
    if differ:
        raise InputError(f"--init {folder}: its {', '.join(f'{k} {theirs[k]!r}' for k in differ)} differ from this run's "
                         f"({', '.join(f'{mine[k]!r}' for k in differ)}); start from a head with the same settings")
    head.load_state_dict(start.state_dict())  # copied onto the head's device; bf16-saved weights, now float32
    record = start.config.extra.get("training", {})
    earlier = record.get("init") or None  # the saved head's own warm start, if it had one
    steps_all = (record.get("steps") or 0) + ((earlier or {}).get("steps_all") or (earlier or {}).get("steps") or 0)
    return {"from": str(folder), "steps": record.get("steps"), "minutes_total": record.get("minutes_total"),
            "steps_all": steps_all, "init": earlier}


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
    prompts_path: str | Path | None,
    out_dir: str | Path,
    kind: str = "causal",
    steps: int | None = 2000,
    *,
    corpus: str | Path | None = None,
    data_path: str | Path | None = None,
    max_new_tokens: int = 256,
    max_prompts: int | None = None,
    device: str | None = None,
    resume: bool = True,
    progress: bool = True,
    **train_options: Any,
) -> dict:
    """Self-distill `target_path` (HF folder or .gguf) and train one head into `out_dir`, on a corpus
    made by `jetspec make-corpus` (`corpus`) or on answers to `prompts_path` (generated once into
    `data_path`, default out_dir/answers.safetensors, and reused)."""
    cfg = TrainConfig(kind=kind, steps=steps, **train_options)  # bad options fail before the target loads
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    model, tokenizer = load_hf_target(target_path, dev, torch.bfloat16 if dev.type == "cuda" else torch.float32)
    identity = hf_identity(model, Path(target_path).stem if Path(target_path).suffix == ".gguf" else Path(target_path).name)
    if corpus is not None:
        data = load_corpus(corpus)
        if data.meta.get("target_fingerprint") != identity["target_fingerprint"]:
            raise InputError(f"corpus {corpus} holds answers of target {data.meta.get('target_name')!r}, not of {identity['target_name']!r}")
    else:
        data = prepare_data(model, tokenizer, prompts_path, data_path or Path(out_dir) / "answers.safetensors", identity,
                            max_new_tokens=max_new_tokens, max_prompts=max_prompts)  # fmt: skip
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    summary = train(model, data, out_dir, cfg, identity, pad_id=pad, resume=resume, progress=progress)
    # beside the head: prompt lookup's acceptance rates on the same answers, which the `jetspec` drafter scores its lookup with
    fit_answers(data, LOOKUP_ROWS, source={"command": "jetspec train-head (its training answers)"}).save(Path(out_dir) / CALIBRATION)
    if kind in ("causal", "dflash"):  # and the head's own acceptance rates, on the answers it was validated on
        head = load_head(out_dir).to(dev).eval()
        held = split_rows(data, cfg.max_len, cfg.eval_rows)[1]
        if held:
            calibrate(head, model, data, held, HeadOptions.model_fields["top_k"].default,
                      {"command": "jetspec train-head (its held-out answers)",
                       "head_sha256": weights_digest(Path(out_dir) / WEIGHTS)}, progress).save(Path(out_dir) / HEAD_RATES)
    return summary
