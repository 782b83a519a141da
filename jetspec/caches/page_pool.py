"""The physical pages of a paged KV pool: their free list (`PageAllocator`) and the K/V tensors
several sequences' caches share (`PagePool`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..core.interfaces import TargetInfo
from ..core.memory import check_fits


class PageAllocator:
    """A free list of the physical pages of one pool (LIFO: recently freed pages are warm).

    `allocate(n, prefer)` hands out the pages of `prefer` that are still free first, in that order,
    then the most recently freed: a sequence of a batch asks for the pages it gave back at its last
    commit, which the other sequences' commits have since buried in the list. Getting them back
    keeps its device tables as they are (`TableMirror`: no upload), where plain LIFO would give it
    another sequence's page every round. A page taken through `prefer` stays in the list as a stale
    entry, skipped when reached (`_taken`) and dropped when the list is compacted."""

    def __init__(self, num_pages: int):
        self.num_pages = num_pages
        self.reset()

    @property
    def free(self) -> int:
        return self._count

    def allocate(self, n: int, prefer: Sequence[int] = ()) -> list[int]:
        if n > self._count:  # callers check first; reaching this is a bug, not a user error
            raise RuntimeError(f"page pool exhausted: {n} pages asked, {self._count} free")
        out: list[int] = []
        for page in prefer:
            if len(out) == n:
                break
            if not self._taken[page]:
                self._taken[page] = True
                out.append(page)
        stack, taken = self._free, self._taken
        while len(out) < n:
            page = stack.pop()
            if not taken[page]:  # else a stale entry: taken through `prefer` since it was freed
                taken[page] = True
                out.append(page)
        self._count -= n
        return out

    def release(self, pages: Sequence[int]) -> None:  # an `allocate` of as many next returns them in this order
        for page in reversed(pages):
            self._taken[page] = False
            self._free.append(page)
        self._count += len(pages)
        if len(self._free) > 2 * self.num_pages:  # stale entries: keep each free page's latest one, in order
            kept, seen = [], set()
            for page in reversed(self._free):
                if not self._taken[page] and page not in seen:
                    seen.add(page)
                    kept.append(page)
            self._free = kept[::-1]

    def reset(self) -> None:
        self._free = list(range(self.num_pages - 1, -1, -1))  # the stack: its end is handed out first
        self._taken = [False] * self.num_pages  # [pages] whether a page is in use
        self._count = self.num_pages


@dataclass
class PagePool:
    """The pages several sequences' caches share (`PagedKVCache.sequences`)."""

    k: torch.Tensor  # [L, pages, P, Hkv, D]
    v: torch.Tensor  # [L, pages, P, Hkv, D]
    allocator: PageAllocator

    @staticmethod
    def make(info: TargetInfo, num_pages: int, page_size: int) -> "PagePool":
        shape = (info.num_layers, num_pages, page_size, info.kv_heads_here, info.head_dim)
        elem = torch.empty((), dtype=info.dtype).element_size()
        check_fits(2 * elem * math.prod(shape), info.device, f"a paged KV cache of {num_pages} pages of {page_size} tokens")
        k = torch.zeros(shape, dtype=info.dtype, device=info.device)  # [L, pages, P, Hkv, D]
        v = torch.zeros(shape, dtype=info.dtype, device=info.device)  # [L, pages, P, Hkv, D]
        return PagePool(k, v, PageAllocator(num_pages))
