"""`Pipeline`: the decode loop.

    prefill(prompt[:-1]) -> drafter.observe
    repeat:
        proposal = drafter.propose(state, budget)          # draft
        tree     = scorer.build(proposal, root, budget)     # build
        logits   = target.forward(tree, KV)                 # verify (one forward, tree mask)
        accepted = verifier.accept(tree, logits)            # accept
        KV.commit(accepted.path); drafter.observe(...)      # commit
        state.tokens += drafts on the path + bonus

Plain decoding (`speculative=False`, or budget 0) is the same loop with a root-only tree: it is
the baseline every speedup is measured against, in the same engine and process.

What the drafter, scorer and verifier return is checked every round (`checks.py`): a plugin can
make a round fail in one line, never make the output wrong.

The tree goes to the device in one copy (`on_device.TreeUpload`). A verifier with
`accept_on_device` decides there, a cache with `stage_commit` moves the kept K/V there behind it,
and the host reads the packed path back in one small copy (`on_device.Readback`): the round's
only wait for the device; a drafter with `draft_ahead` (`DraftsAhead`) queues its next round's
device work before it too (timed as `accept`). Other verifiers and caches take the host path
(`accept`, `commit`), and so does a CPU target unless `generation.accept_on_device = "always"`.
"""

from __future__ import annotations

import sys
import time
from contextlib import closing
from typing import Any, Callable, Sequence

import torch

from .checks import Blame, blame_proposal, check_acceptance, check_tree, reading
from .config import PipelineConfig
from .distributed import share_path, share_tree
from .errors import CapacityError, InputError, JetSpecError, PluginError
from .frozen_heap import frozen_heap
from .interfaces import (
    Acceptance, AttentionMeta, CommitsOnDevice, DecodeState, Drafter, DraftsAhead, KVCache, PadsForward, Proposal,
    ResettableVerifier, Target, TargetOutput, TreeScorer, Verifier, accepts_on_device, extra_pending, observed_layers,
    ranks_of, rows_kept_ahead,
)
from .on_device import DeviceTree, Readback, TreeUpload, unpack
from .plain_ahead import plain_ahead
from .results import PHASES, GenerationResult, GenerationStats
from .stops import cut_at_stop, stop_set
from .tree import DraftTree

class Pipeline:
    def __init__(
        self,
        target: Target,
        drafter: Drafter | None,
        scorer: TreeScorer,
        verifier: Verifier,
        new_cache: Callable[[int], KVCache],
        config: PipelineConfig,
        labels: dict[str, str] | None = None,
        new_drafter: Callable[[], Drafter] | None = None,
        new_verifier: Callable[[], Verifier] | None = None,
    ):
        self.target = target
        self.drafter = drafter
        self.scorer = scorer
        self.verifier = verifier
        self.new_cache = new_cache  # capacity -> KVCache for one sequence
        # more drafters and verifiers like these, one per sequence of a batch (`generate_many`)
        self.new_drafter, self.new_verifier = new_drafter, new_verifier
        self._engine: tuple[tuple, Any] | None = None  # (batch size, row cap, factories) -> its BatchEngine
        self.config = config
        # kind -> "drafter 'ngram' (plugin 'jetspec.builtins')": who a PluginError names
        parts = {"target": target, "drafter": drafter, "scorer": scorer, "verifier": verifier}
        self.labels = {k: f"{k} {type(v).__name__}" for k, v in parts.items()} | (labels or {})
        self._cache: KVCache | None = None
        self._upload = TreeUpload(target.info.device)  # the round's one host-to-device copy
        self._readback = Readback(target.info.device)  # its one device-to-host copy
        self._pads = isinstance(target, PadsForward)  # once: a Protocol check costs microseconds a round
        self._on_device = (False, False)  # (verifier accepts on the device, cache stages commits): per generate
        self._ahead: DraftsAhead | None = None  # the drafter, when it queues its next round before the read-back: per generate
        self._rows_ahead = False  # ... and keeps its committed rows itself (`KeepsRowsAhead`): per generate
        # a tensor-parallel target's group: rank 0 drafts and accepts, the others verify what it shares
        self._ranks = ranks_of(target)
        self._leads = self._ranks is None or self._ranks.leads

    def _cache_for(self, capacity: int) -> KVCache:
        """The pipeline's KV cache, reset; reallocated only when a longer sequence needs it (a
        kept cache keeps captured CUDA graphs valid across generate calls)."""
        if self._cache is None or self._cache.capacity < capacity:
            self._cache = None  # free the old buffers first
            # round up (powers of two from 1024): a warm-up and the runs after it share one cache, and its CUDA graphs
            limit = self.target.info.max_positions + extra_pending(self.target)
            self._cache = self.new_cache(min(max(1024, 1 << (capacity - 1).bit_length()), max(limit, capacity)))
        self._cache.reset()
        return self._cache

    # ------------------------------------------------------------------ inputs
    def encode(self, prompt: str | Sequence[int], chat_template: bool | None = None) -> list[int]:
        if isinstance(prompt, str):
            if not prompt.strip():
                raise InputError("the prompt is empty; give some text or token ids")
            try:
                prompt.encode("utf-8")
            except UnicodeEncodeError as e:  # e.g. undecodable command-line bytes, kept as lone surrogates
                raise InputError(f"the prompt is not valid UTF-8 text (character {e.start} cannot be encoded); give UTF-8 text") from None
            tok = self.target.tokenizer
            if tok is None:
                raise InputError("this target has no tokenizer; pass the prompt as token ids")
            use_template = self.config.generation.chat_template if chat_template is None else chat_template
            if use_template and getattr(tok, "chat_template", None):
                ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
                if isinstance(ids, dict) or hasattr(ids, "keys"):
                    ids = ids["input_ids"]
            else:
                ids = tok(prompt, add_special_tokens=True)["input_ids"]
            ids = [int(t) for t in ids]
        else:
            ids = [int(t) for t in prompt]
            if not ids:
                raise InputError("the prompt is empty; give some text or token ids")
        vocab = self.target.info.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise InputError(f"prompt token id {bad[0]} is outside the vocabulary [0, {vocab})")
        return ids

    # ------------------------------------------------------------------ decoding
    def generate(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
        speculative: bool = True,
        budget: int | None = None,
        on_tokens: Callable[[list[int]], None] | None = None,
    ) -> GenerationResult:
        """Generate up to `max_new_tokens` tokens after `prompt` (text or token ids).

        `speculative=False` runs plain decoding in the same engine. `on_tokens` is called with the
        tokens committed by each round (for streaming)."""
        gen = self.config.generation
        max_new = gen.max_new_tokens if max_new_tokens is None else max_new_tokens
        if max_new < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {max_new}")
        budget = gen.budget if budget is None else budget
        speculating = speculative and budget > 0 and self.drafter is not None
        drafter = self.drafter if speculating and self._leads else None  # tensor-parallel: rank 0 drafts
        stops = stop_set(self.target.info, gen.stop_token_ids if stop_token_ids is None else stop_token_ids)

        prompt_ids = self.encode(prompt)
        cache = self._sequence_cache(len(prompt_ids), max_new, budget if speculating else 0)
        state = DecodeState(tokens=list(prompt_ids), prompt_len=len(prompt_ids))
        stats = GenerationStats()
        if isinstance(self.verifier, ResettableVerifier):  # a sampling verifier re-seeds here
            self.verifier.reset(state)
        self._on_device = self._device_path(cache)
        self._ahead = drafter if self._on_device[0] and self._ranks is None and isinstance(drafter, DraftsAhead) else None
        self._rows_ahead = self._ahead is not None and rows_kept_ahead(drafter)
        # every rank asks for the same hidden states, so that their CUDA graphs (keyed by them, with
        # the collectives inside) are captured at the same forward, whoever drafts
        hidden_layers = observed_layers(self.drafter if speculating else None)
        stopped = "length"
        try:
            with frozen_heap():  # no full collection of the pre-existing heap stalls the loop
                self._prefill(state, cache, drafter, hidden_layers, stats)
                if not speculating and self._on_device[0] and self._ranks is None and self.config.generation.plain_ahead:
                    stopped = plain_ahead(self, state, cache, max_new, stops, stats, on_tokens)
                while stopped == "length" and len(state.tokens) - state.prompt_len < max_new:
                    room = max_new - (len(state.tokens) - state.prompt_len)
                    new, stopped = self._round(state, cache, drafter, hidden_layers, budget if speculating else 0, room,
                                               stops, stats)
                    if on_tokens:
                        on_tokens(new)
        except JetSpecError as e:
            e.partial = self._result(state, stats, prompt_ids, "error")  # nothing produced is lost
            raise
        return self._result(state, stats, prompt_ids, stopped)

    def _device_path(self, cache: KVCache) -> tuple[bool, bool]:
        """(accept on the device, stage the commit there) for this generate: asked once, since
        isinstance of a runtime Protocol costs microseconds. On a CPU target ("auto") the logits
        are host memory already, and the host walk costs fewer ops than the device walk."""
        mode = self.config.generation.accept_on_device
        on = mode == "always" or (mode == "auto" and self.target.info.device.type != "cpu")
        return on and accepts_on_device(self.verifier), on and isinstance(cache, CommitsOnDevice)

    def _sequence_cache(self, prompt_len: int, max_new: int, budget: int) -> KVCache:
        """The cache for one sequence: room for every committed token plus the last round's tree."""
        capacity = prompt_len + max_new + budget  # >= committed + tree at the last round
        limit = self.target.info.max_positions
        if capacity > limit:
            raise CapacityError(
                f"prompt ({prompt_len}) + max_new_tokens ({max_new}) + budget ({budget}) "
                f"needs {capacity} positions; the target allows {limit}"
            )
        return self._cache_for(capacity + extra_pending(self.target))

    def _prefill(self, state: DecodeState, cache: KVCache, drafter: Drafter | None, hidden_layers: tuple[int, ...],
                 stats: GenerationStats) -> None:
        """The prompt but its last token (the first root) in one chain forward; the drafter starts and observes it."""
        t0 = time.perf_counter()
        n = state.prompt_len - 1
        hidden = None
        if n > 0:
            device = self.target.info.device
            self._reserve(cache, n)
            chain = torch.tensor(state.tokens[:n], device=device)
            hidden = self._forward(chain, AttentionMeta.for_chain(n, 0, device), cache, hidden_layers).hidden
            cache.commit(range(n))
        if drafter:
            with Blame(self.labels["drafter"], "in reset"):
                drafter.reset(state)
            with Blame(self.labels["drafter"], "in observe"):
                drafter.observe(state, hidden)
        stats.seconds["prefill"] += time.perf_counter() - t0

    def _round(self, state: DecodeState, cache: KVCache, drafter: Drafter | None, hidden_layers: tuple[int, ...],
               budget: int, room: int, stops: set[int], stats: GenerationStats) -> tuple[list[int], str]:
        """One round (draft, build, verify, accept, commit) -> the tokens it committed, at most
        `room` and up to the first stop token, and why generation stops ("length": it goes on)."""
        who, clock = self.labels, time.perf_counter
        root = state.tokens[-1]
        t0 = clock()
        proposal = self.propose(state, budget) if drafter else None
        t1 = clock()
        tree = self.build_tree(proposal, root, budget) if drafter else DraftTree.root_only(root)
        if self._ranks is not None and budget > 0:  # every rank verifies rank 0's tree
            tree = share_tree(tree, budget, self._ranks)
        t2 = clock()
        prefix = cache.committed
        self._reserve(cache, tree.size)
        dtree = self._upload(tree, prefix)
        meta = AttentionMeta(prefix_len=prefix, positions=dtree.positions, subtree_sizes=dtree.subtree_sizes)
        out = self._forward(dtree.tokens, meta, cache, hidden_layers)
        t3, waited = clock(), self._readback.waited
        ahead = None if self._ahead is None else lambda packed: self._ahead.draft_ahead(out.hidden, packed, budget)  # noqa: E731
        acc, path_dev = self._accept(tree, dtree, out.logits, cache, state, ahead) if self._leads else (None, None)
        if self._ranks is not None:  # every rank commits rank 0's path (a sampling verifier draws there alone)
            path, bonus = share_path(acc.path if acc else None, acc.bonus if acc else -1, budget, self._ranks)
            acc = acc or Acceptance(path=path, bonus=bonus)
        t4, wait = clock(), self._readback.waited - waited
        cache.commit(acc.path)
        new, stopped = cut_at_stop(acc.new_tokens(tree)[:room], stops, self.target.info)
        state.tokens.extend(new)
        if drafter and stopped == "length":
            hidden = None  # also where draft_ahead kept the whole committed path's rows (`KeepsRowsAhead`): none gathered
            if out.hidden is not None and not (self._rows_ahead and len(new) == len(acc.path)):  # a device index where there is one
                hidden = out.hidden[acc.path] if path_dev is None else out.hidden.index_select(0, path_dev[: len(acc.path)])
            with Blame(who["drafter"], "in observe"):
                drafter.observe(state, hidden)
        t5 = clock()
        stats.record_round(len(new), acc.accepted_drafts, tree.budget)
        for phase, dt in zip(PHASES[1:], (t1 - t0, t2 - t1, t3 - t2, t4 - t3 - wait, wait, t5 - t4)):
            stats.seconds[phase] += dt
        return new, stopped

    def _accept(self, tree: DraftTree, dtree: DeviceTree, logits: torch.Tensor, cache: KVCache, state: DecodeState,
                ahead: Callable[[torch.Tensor], None] | None = None) -> tuple[Acceptance, torch.Tensor | None]:
        """The round's acceptance, checked, and its path on the device (None on the host path). The
        device path queues the KV gather (its path clamped into the tree: a wrong plugin path fails
        the check, not an index), the read-back, then `ahead`: the host reads while the device drafts."""
        who, vocab = self.labels["verifier"], self.target.info.vocab_size
        accepts, stages = self._on_device
        if not accepts:
            with Blame(who, "in accept"):
                acc = self.verifier.accept(tree, logits, state)
            return check_acceptance(acc, tree, vocab, who), None
        n, d = tree.size, dtree.max_depth
        packed = self._packed(dtree, logits, state)
        path_dev = packed[1 : d + 2]  # [D + 1]; its first k entries are checked below
        if n > 1 and stages:
            cache.stage_commit(path_dev.clamp(0, n - 1))
        self._readback.start(packed)  # queued before the drafter's next round: the host reads this round while the device drafts
        if ahead is not None:
            with Blame(self.labels["drafter"], "in draft_ahead"):
                ahead(packed)
        path, tokens = unpack(self._readback.wait())
        acc = Acceptance(path=path, bonus=tokens[-1] if tokens else -1)
        return check_acceptance(acc, tree, vocab, who), path_dev

    def _packed(self, dtree: DeviceTree, logits: torch.Tensor, state: DecodeState) -> torch.Tensor:
        """The verifier's `accept_on_device`, its result's shape checked -> packed [2D + 3] int64 (`on_device`)."""
        who, d = self.labels["verifier"], dtree.max_depth
        with Blame(who, "in accept_on_device"):
            packed = self.verifier.accept_on_device(dtree, logits, state)
        if not (isinstance(packed, torch.Tensor) and packed.shape == (2 * d + 3,) and packed.dtype == torch.int64):
            got = tuple(packed.shape) if isinstance(packed, torch.Tensor) else type(packed).__name__
            raise PluginError(f"{who} returned {got} from accept_on_device; expected an int64 tensor of shape [{2 * d + 3}]")
        return packed

    def _reserve(self, cache: KVCache, n: int) -> None:
        """`cache.begin` for a forward of n tokens: a padded CUDA graph's slots too (`PadsForward`), reserved once."""
        cache.begin(self.target.pending_for(n, cache) if self._pads else n)

    def _forward(self, tokens: torch.Tensor, meta: AttentionMeta, cache: KVCache, hidden_layers: tuple[int, ...]) -> TargetOutput:
        """target.forward, its output's shapes checked (no sync: shapes live on the host)."""
        who, n = self.labels["target"], tokens.numel()
        with Blame(who, "in forward"):
            out = self.target.forward(tokens, meta, cache, hidden_layers)
        if not isinstance(out, TargetOutput):
            raise PluginError(f"{who} returned {type(out).__name__} from forward; expected a TargetOutput")
        if out.logits.dim() != 2 or out.logits.shape[0] != n or out.logits.shape[1] < self.target.info.vocab_size:
            raise PluginError(f"{who} returned logits of shape {tuple(out.logits.shape)} for {n} tokens; expected [{n}, {self.target.info.vocab_size}]")
        if hidden_layers and (out.hidden is None or out.hidden.shape[:2] != (n, len(hidden_layers))):
            got = None if out.hidden is None else tuple(out.hidden.shape)
            raise PluginError(f"{who} returned hidden states of shape {got} for {n} tokens and {len(hidden_layers)} layers")
        return out

    def propose(self, state: DecodeState, budget: int) -> Proposal:
        """The drafter's proposal for this round, its children checked as they are read (a
        built-in kind's need not be: `core/checks.reading`)."""
        who = self.labels["drafter"]
        with Blame(who, "in propose"):
            return reading(self.drafter.propose(state, budget), who, self.target.info.vocab_size)

    def build_tree(self, proposal: Proposal, root: int, budget: int) -> DraftTree:
        """The scorer's tree for this round, checked against it (`core/checks.py`). When the build
        or the check fails, the proposal is re-read first: a drafter's fault is the drafter's."""
        who, vocab = self.labels["scorer"], self.target.info.vocab_size
        try:
            with Blame(who, "in build"):
                tree = self.scorer.build(proposal, root, budget)
            return check_tree(tree, root, budget, vocab, who)
        except (PluginError, InputError) as e:  # InputError: a DraftTree constructor refused what the scorer assembled
            blame_proposal(proposal, lambda p: self.scorer.build(p, root, budget), self.labels["drafter"], vocab)
            if isinstance(e, PluginError):
                raise
            raise PluginError(f"{who} built an invalid tree: {e}") from e

    def _result(self, state: DecodeState, stats: GenerationStats, prompt_ids: list[int], stopped: str) -> GenerationResult:
        generated = list(state.generated)
        text = None
        if self.target.tokenizer is not None:
            text = self.target.tokenizer.decode(generated, skip_special_tokens=True)
        return GenerationResult(tokens=generated, text=text, stats=stats, prompt_tokens=prompt_ids, stopped=stopped)

    def generate_many(
        self,
        prompts: Sequence[str | Sequence[int]],
        batch_size: int | None = None,
        max_new_tokens: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
        speculative: bool = True,
        budget: int | None = None,
        on_result: Callable[[int, GenerationResult], None] | None = None,
        max_verify_rows: int | None = None,
    ) -> list[GenerationResult]:
        """`generate` for every prompt, `batch_size` sequences at a time (default
        `generation.batch_size`; `core/batch_engine.py`), each prompt's output exactly what
        `generate` gives it alone; a step verifies at most `max_verify_rows` rows (default
        `generation.max_verify_rows`), which the sequences' budgets share. -> results in input
        order; `on_result(index, result)` is called as each finishes (any order). The first
        failure is raised, its `partial` holding what that prompt had committed (`jetspec run`
        records failures per row instead). Batch size 1, uncapped: `generate` per prompt, as `jetspec run` does."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            raise InputError("generate_many takes a list of prompts (texts or token-id lists), not one prompt; "
                             "use generate for one")
        results: list[GenerationResult | None] = [None] * len(prompts)
        kw = dict(max_new_tokens=max_new_tokens, stop_token_ids=stop_token_ids, speculative=speculative, budget=budget)
        gen = self.config.generation
        if (gen.batch_size if batch_size is None else batch_size) == 1 and (
                gen.max_verify_rows if max_verify_rows is None else max_verify_rows) is None:
            for i, prompt in enumerate(prompts):
                results[i] = self.generate(prompt, **kw)
                if on_result:
                    on_result(i, results[i])
            return results  # type: ignore[return-value]
        with closing(self.batched(batch_size, max_verify_rows).run(prompts, **kw)) as run:  # a failure closes the run:
            for done in run:  # its frozen heap is given back now, not when a traceback holding it is collected
                if done.error is not None:
                    raise done.error
                results[done.index] = done.result
                if on_result:
                    on_result(done.index, done.result)
        return results  # type: ignore[return-value]

    def batched(self, batch_size: int | None = None, max_verify_rows: int | None = None):
        """A `BatchEngine` over this pipeline's parts: one drafter and verifier per slot, made by
        the factories the builder passed (a hand-assembled pipeline must pass them too); both
        arguments default to the `generation` config's."""
        from .batch import SequenceParts, batch_exactness_note
        from .batch_engine import BatchEngine

        gen = self.config.generation
        b = gen.batch_size if batch_size is None else batch_size
        rows = gen.max_verify_rows if max_verify_rows is None else max_verify_rows
        if self.new_verifier is None or (self.drafter is not None and self.new_drafter is None):
            raise InputError("this pipeline has no drafter/verifier factories to give each sequence its own; build it "
                             "with jetspec.builder() or from_config, or pass new_drafter and new_verifier to Pipeline")
        key = (b, rows, self.new_drafter, self.new_verifier)
        if self._engine is None or self._engine[0] != key:  # kept: a drafter per slot may be costly to build
            if note := batch_exactness_note(self.target.info, b):
                print(note, file=sys.stderr)
            self._engine = (key, BatchEngine(self, SequenceParts.factory(self.new_drafter, self.new_verifier), b, rows))
        return self._engine[1]

    def generate_plain(self, prompt: str | Sequence[int], **kw: Any) -> GenerationResult:
        """Plain (non-speculative) decoding in the same engine: the baseline."""
        return self.generate(prompt, speculative=False, **kw)
