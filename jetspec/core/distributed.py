"""Several processes, one run: the torch.distributed group that `torchrun` starts, and the few
collectives the engine makes on it.

    torchrun --nproc-per-node N -m jetspec.cli generate|run|bench ...

`torchrun` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in each process's
environment; `process_group` (the one place a group is made and destroyed: `jetspec.cli.main`)
reads them. Without them, or with WORLD_SIZE 1, there is no group and nothing here is called: a
single process makes no collective at all.

Two uses of a group:
* tensor parallelism (`tensor_parallel = N` in the target config, N = WORLD_SIZE): one sequence,
  every rank holds 1/N of each layer. Rank 0 drafts and accepts; `share_tree` sends its tree to
  the other ranks before the verify forward, `share_acceptance` its path after it, so every rank
  verifies the same tree and commits the same K/V whatever the drafter or verifier does (an
  unseeded sampling verifier draws differently on every rank; its rank-0 draw is the one kept).
* data parallelism (`jetspec run` with `tensor_parallel = 1`): the prompts are split over the
  ranks, which meet only at the end (`sum_counts`).

Failure: the group has a timeout (`process_group(timeout_s=...)`). A collective whose peer died
(its socket closes: gloo notices at once) or does not answer within it raises `RankLost`, one
line, and the CLI ends the run there; rows already written are on disk (`jetspec run --resume`).
That is gloo's behaviour (tested). Under NCCL a collective only enqueues work, so the host does
not wait in it: a lost peer is noticed by NCCL's watchdog once the timeout passes, and with
torch's default TORCH_NCCL_ASYNC_ERROR_HANDLING it ends the process (not the one-line path; the
rows are on disk all the same). Not yet seen on GPUs.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, Sequence

import torch

from .errors import ConfigError, JetSpecError
from .tree import DraftTree

DEFAULT_TIMEOUT_S = 600.0  # a 70B load on the slowest rank must fit inside it (the first collective waits for it)
# data parallel: a rank that has answered its share waits this long for the slowest one (a rank
# that died is noticed at once: its sockets close), where the group's timeout would cut it short
PATIENT_TIMEOUT_S = 24 * 3600.0


class RankLost(JetSpecError):
    """A collective failed: another rank died or stopped answering. Not a per-prompt error: the
    run cannot go on (`jetspec run` ends instead of recording it in a row)."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group: rank r of `world` (r = 0 leads: drafts, accepts, prints,
    writes), and where collective buffers live (`device`: cuda:LOCAL_RANK for NCCL, cpu for gloo)."""

    rank: int
    world: int
    device: torch.device

    @property
    def leads(self) -> bool:
        return self.rank == 0


def env_world() -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, LOCAL_RANK) from torchrun's environment; (0, 1, 0) outside it. A bad
    value is a one-line ConfigError."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK {rank} and WORLD_SIZE {world}: need 0 <= RANK < WORLD_SIZE (torchrun sets them)")
    return rank, world, local


_CURRENT: list[Ranks | None] = [None]  # the group `process_group` made, while it lives


def current() -> Ranks | None:
    """The live group's `Ranks`, or None (one process, or no `process_group` around the caller)."""
    return _CURRENT[0]


@contextmanager
def process_group(timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Ranks | None]:
    """The default torch.distributed group for the block, from torchrun's environment: NCCL when
    CUDA is available (each rank on cuda:LOCAL_RANK), else gloo; destroyed at exit. Yields None
    and does nothing when WORLD_SIZE is 1 or unset."""
    import torch.distributed as dist

    rank, world, local = env_world()
    if world == 1:
        yield None
        return
    if not dist.is_available():
        raise ConfigError(f"WORLD_SIZE is {world} but this torch has no torch.distributed; run one process")
    if _CURRENT[0] is not None or dist.is_initialized():
        raise ConfigError("a torch.distributed process group is already live; process_group makes the only one")
    if torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices; "
                              f"give --nproc-per-node at most {torch.cuda.device_count()}")
        torch.cuda.set_device(local)
        backend, device = "nccl", torch.device("cuda", local)
    else:
        backend, device = "gloo", torch.device("cpu")
    try:
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as e:  # rendezvous: MASTER_ADDR/PORT missing, a peer never came
        raise RankLost(f"cannot form the group of {world} ranks (rank {rank}): {_first_line(e)}") from None
    _CURRENT[0] = Ranks(rank, world, device)
    lost = False
    try:
        yield _CURRENT[0]
    except RankLost:  # a collective is still pending on a dead peer: tearing the group down could hang
        lost = True
        raise
    finally:
        _CURRENT[0] = None
        if not lost:
            dist.destroy_process_group()


def _first_line(e: BaseException) -> str:
    """The gist of a backend's error: its first line, without gloo's `[source.cc:123] ` prefix."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(e).strip())
    return text.splitlines()[0][:160] if text else type(e).__name__


@contextmanager
def _collective(what: str, ranks: Ranks) -> Iterator[None]:
    """Turns a failed collective into one `RankLost` line."""
    import torch.distributed as dist

    try:
        yield
    except (RuntimeError, dist.DistError) as e:
        raise RankLost(f"rank {ranks.rank} of {ranks.world}: {what} failed: another rank died or stopped "
                       f"answering ({_first_line(e)})") from None


# ---------------------------------------------------------------------------- collectives
def all_reduce_sum(x: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """x (this rank's partial sum) <- the sum over ranks, in place; -> x. A plain
    `dist.all_reduce` on the current stream: with NCCL it can be captured in a CUDA graph (every
    rank captures and replays the same collectives in the same order: the pipeline keeps the
    ranks in lockstep). With 2 ranks each element is a + b, the same bits whichever rank adds."""
    import torch.distributed as dist

    with _collective("an all-reduce in the forward", ranks):
        dist.all_reduce(x)
    return x


def share_tree(tree: DraftTree | None, budget: int, ranks: Ranks) -> DraftTree:
    """Rank 0's tree (`tree` there; ignored elsewhere) on every rank, in one broadcast of
    buf [5, budget + 2] float64 on `ranks.device`: buf[0, 0] = N; columns 1..N hold tokens,
    parents, depths, subtree sizes and scores (ids < 2^53 are exact in float64)."""
    import torch.distributed as dist

    buf = torch.zeros(5, budget + 2, dtype=torch.float64)  # [5, budget + 2]
    if ranks.leads:
        n = tree.size
        buf[0, 0] = n
        for row, t in enumerate((tree.tokens, tree.parents, tree.depths, tree.subtree_sizes, tree.scores)):
            buf[row, 1 : n + 1] = t.to(torch.float64)
    buf = buf.to(ranks.device)
    with _collective("sharing the draft tree", ranks):
        dist.broadcast(buf, src=0)
    if ranks.leads:
        return tree
    buf = buf.cpu()
    n = int(buf[0, 0])
    ints = buf[:4, 1 : n + 1].to(torch.int64)  # [4, N]
    return DraftTree(tokens=ints[0].clone(), parents=ints[1].clone(), depths=ints[2].clone(),
                     subtree_sizes=ints[3].clone(), scores=buf[4, 1 : n + 1].to(torch.float32))


def share_path(path: Sequence[int] | None, bonus: int, budget: int, ranks: Ranks) -> tuple[list[int], int]:
    """Rank 0's accepted (path, bonus) on every rank, in one broadcast of buf [budget + 3] int64:
    [len(path), bonus, path...] (a path has at most budget + 1 nodes)."""
    import torch.distributed as dist

    buf = torch.zeros(budget + 3, dtype=torch.int64)  # [budget + 3]
    if ranks.leads:
        buf[0], buf[1] = len(path), bonus
        buf[2 : 2 + len(path)] = torch.tensor(list(path), dtype=torch.int64)
    buf = buf.to(ranks.device)
    with _collective("sharing the accepted path", ranks):
        dist.broadcast(buf, src=0)
    if ranks.leads:
        return list(path), bonus
    buf = buf.cpu()
    return buf[2 : 2 + int(buf[0])].tolist(), int(buf[1])


def patient_group(ranks: Ranks) -> Any:
    """A gloo group of every rank whose collectives wait up to PATIENT_TIMEOUT_S: for the end of a
    data-parallel run, where ranks finish their shares minutes apart. Every rank must make it at
    the same point (making a group is itself collective)."""
    import torch.distributed as dist

    with _collective("making the end-of-run group", ranks):
        return dist.new_group(backend="gloo", timeout=timedelta(seconds=PATIENT_TIMEOUT_S))


def sum_counts(values: Sequence[float], ranks: Ranks, op: str = "sum", group: Any = None) -> list[float]:
    """Per-rank numbers combined over the group ("sum" or "max"), on every rank. `group`: a
    `patient_group` (gloo: the buffer on the CPU), else the default group."""
    import torch.distributed as dist

    device = torch.device("cpu") if group is not None else ranks.device
    buf = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)  # [k]
    with _collective("combining the ranks' counts", ranks):
        dist.all_reduce(buf, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX, group=group)
    return buf.cpu().tolist()


def barrier(ranks: Ranks, group: Any = None) -> None:
    """Every rank (of `group`, a `patient_group`, else the default group) reaches this point."""
    import torch.distributed as dist

    with _collective("waiting for the other ranks", ranks):
        dist.barrier(group=group)
