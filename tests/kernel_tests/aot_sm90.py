"""Compile every Triton kernel of jetspec for Hopper (sm_90) without a GPU; prints one line per
kernel variant. Run in a process of its own: the kernels must not be defined in interpreter mode.

Pointers and strides carry the divisibility-by-16 hint the JIT gives them on the GPU (Qwen-like
shapes: every stride is a multiple of 16), and the projections' integer arguments are specialized by
their values at a launch as the JIT does (`compile_for_sm90`'s `values`: M = 1 a constant, a multiple of
16 aligned), so what compiles here is what the GPU runs, software pipelining and shared-memory use included. Each variant prints its shared memory and the K/V
buffering the pipeliner chose ("kv buffers N, overlap yes/no")."""

import os
import re
import sys

assert os.environ.get("TRITON_INTERPRET") != "1", "run without TRITON_INTERPRET"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from jetspec.kernels import triton_tree_attention as kernels  # noqa: E402
from jetspec.kernels.triton_backend import candidate_configs, choose_config  # noqa: E402

STRIDES = ["stride_qn", "stride_qh", "stride_kr", "stride_kh", "stride_vr", "stride_vh", "stride_on", "stride_oh"]
SMEM = 227 * 1024  # Hopper's shared memory per block


def compile_for_sm90(fn, types: dict, consts: dict, num_warps: int = 4, num_stages: int = 2, values: dict | None = None,
                     **options):
    """`values`: integer arguments' values at a launch, specialized as the JIT does on the GPU — 1 becomes a
    constant, a multiple of 16 gets the divisibility hint (which lets the pipeliner copy masked tiles
    asynchronously); any other integer gets nothing."""
    names, values = fn.arg_names, values or {}
    signature = {n: types.get(n, "constexpr") for n in names}
    ones = {n for n, v in values.items() if v == 1}
    signature.update({n: "constexpr" for n in ones})
    constexprs = {(names.index(n),): v for n, v in consts.items()} | {(names.index(n),): 1 for n in ones}
    aligned = {(names.index(n),): [["tt.divisibility", 16]] for n, t in signature.items()
               if t.startswith("*") or (n.startswith("stride") and n not in values) or (n in values and values[n] % 16 == 0)}
    return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=aligned),
                          target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages, **options})


def kv_buffering(ttgir: str) -> str:
    """How many K buffers the first key loop got, and whether any copy stays in flight during math."""
    bufs = re.search(r"k_\d+ = ttg.local_alloc : \(\) -> !ttg.memdesc<(\d+)x", ttgir)
    waits = [int(w) for w in re.findall(r"async_wait [^\n]*\{num = (\d+)", ttgir)]
    return f"kv buffers {bufs.group(1) if bufs else 0}, overlap {'yes' if any(waits) else 'no'}"


def tree_attention(dtype, head_dim, block_m, block_n, split, fused, warps, stages, group=4, packed=False):
    types = dict(Q=f"*{dtype}", K=f"*{dtype}", V=f"*{dtype}", SLOTS="*i32", SIZES="*i32", PREFIX="*i32", O=f"*{dtype}",
                 O_PART="*fp32", LSE_PART="*fp32", COUNTERS="*i32", TILES="*i32", n_queries="i32", qk_scale="fp32",
                 **{s: "i32" for s in STRIDES})
    consts = dict(GROUP=group, HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, SPLIT=split, FUSED=fused,
                  PRECISION="ieee" if dtype == "fp32" else "tf32", UPCAST=False, PACKED=packed)
    k = compile_for_sm90(kernels._tree_attention_fwd, types, consts, num_warps=warps, num_stages=stages)
    name = (f"tree_attention {dtype} d{head_dim} m{block_m} n{block_n} w{warps} s{stages} split={split} fused={fused}"
            + (" packed" if packed else ""))
    assert k.metadata.shared <= SMEM, (name, k.metadata.shared)
    print(f"{name}: ok, {k.metadata.shared} B shared, {kv_buffering(k.asm['ttgir'])}", flush=True)


# dtype / head-dim / split-mode coverage
tree_attention("fp16", 64, 16, 64, False, False, 4, 3)
tree_attention("fp32", 64, 64, 64, True, False, 4, 2)
# the heuristic's picks at Qwen3-8B shapes on a 132-SM H200 (decode, 64 nodes, 256 nodes): bf16, d=128
for n in (1, 64, 256):
    c = choose_config(n, 4, 8, 16384 + n, 128, 132)
    tree_attention("bf16", 128, c.block_m, c.block_n, c.num_splits > 1, c.num_splits > 1, c.num_warps, c.num_stages)
# packed rows of several sequences (batched decoding), decode-sized and tree-sized tiles
tree_attention("bf16", 128, 16, 128, False, False, 4, 5, packed=True)
tree_attention("bf16", 128, 64, 128, True, True, 4, 5, packed=True)
# the deep-pipeline shapes autotuning adds (they may exceed shared memory on other triton versions:
# autotuning skips those, so only report them here)
for n in (1, 256):
    seen = {(c.block_m, c.block_n, c.num_warps, c.num_stages) for c in candidate_configs(n, 4, 8, 16384 + n, 128, 132)}
    for bm, bn, w, s in sorted(seen - {(16, 64, 4, 5), (128, 128, 8, 2)}):
        if s >= 5 and (bm, bn) in {(16, 32), (128, 64)}:
            tree_attention("bf16", 128, bm, bn, True, True, w, s)

types = dict(O_PART="*fp32", LSE_PART="*fp32", O="*bf16", n_rows="i32", num_heads="i32", num_splits="i32",
             stride_on="i32", stride_oh="i32")
assert compile_for_sm90(kernels._combine_splits, types, dict(HEAD_DIM=128, BLOCK_R=32)).asm["ptx"]
print("combine_splits: ok")

# the exact (row- and position-invariant) kernels, launched with fp fusion off as the backend does, and with
# programmatic dependent launch as on Hopper: each waits for the previous kernel first (griddepcontrol.wait)
from jetspec.core.invariant import LAUNCH, block_k  # noqa: E402

LAUNCH = dict(LAUNCH, launch_pdl=True)


def waits_first(k, prefetches: bool = False) -> bool:
    """The kernel's PTX waits for the previous grid before its first global load (a copy to shared memory
    included), store or prefetch —
    with `prefetches`, it asks L2 for lines before the wait (a hint that reads nothing) and still loads
    and stores nothing before it."""
    body = k.asm["ptx"].split("griddepcontrol.wait")
    if len(body) < 2 or re.search(r"\b(ld|st|atom|red)\.global|\bcp\.async", body[0]):
        return False
    return ("prefetch.global.L2" in body[0]) if prefetches else not re.search(r"\bprefetch\.", body[0])


def reads_hints_first(k) -> bool:
    """Before its wait the kernel only asks L2 for lines, and reads what aims them bypassing L1
    (`ld.global.cg`: nothing it reads there can be stale in L1 for the reads after the wait)."""
    body = k.asm["ptx"].split("griddepcontrol.wait")
    return (len(body) > 1 and "prefetch.global.L2" in body[0] and not re.search(r"\b(st|atom|red)\.global|\bcp\.async", body[0])
            and all(".cg" in load for load in re.findall(r"\bld\.global\S*", body[0])))


def loads_before_stores(k) -> bool:
    """After its wait the kernel issues every global load before its first global store (a load is not
    moved past a store it might alias: one in between costs the program another memory latency in turn)."""
    after = k.asm["ptx"].split("griddepcontrol.wait")[-1]
    first_store = re.search(r"\bst\.global", after)
    return first_store is not None and not re.search(r"\bld\.global", after[first_store.start():])


def epilogue_reads_nothing(k) -> bool:
    """No global load after the kernel's last product (mma, or fma where the dot is unrolled): the
    epilogue's inputs were read before the sum, so its end waits on no memory."""
    after = k.asm["ptx"].split("griddepcontrol.wait")[-1]
    last = max(after.rfind("mma.sync"), after.rfind("wgmma.mma_async"), after.rfind("fma.rn"))
    return last >= 0 and not re.search(r"\bld\.global", after[last:])


from jetspec.kernels import triton_invariant_attention as inv  # noqa: E402
from importlib import import_module  # noqa: E402

inv_linear, inv_rmsnorm, inv_rope = (import_module(f"jetspec.targets.decoder.invariant.{m}") for m in ("linear", "rmsnorm", "rope_write"))

# one sequence, and the packed rows of several (batched decoding: a tile table per launch)
for dtype, d, group, chain, split, packed in (("bf16", 128, 4, False, True, False), ("bf16", 64, 3, True, True, False),
                                              ("fp32", 16, 2, False, False, False), ("bf16", 128, 4, False, True, True),
                                              ("bf16", 64, 3, True, True, True)):
    pointers = dict(Q=f"*{dtype}", K=f"*{dtype}", V=f"*{dtype}", SLOTS="*i32", POS="*i64", ANC="*i32", PREFIX="*i32",
                    O=f"*{dtype}", O_PART="*fp32", LSE_PART="*fp32", COUNTERS="*i32", M_STATE="*fp32", L_STATE="*fp32",
                    ACC_STATE="*fp32", F_M="*fp32", F_NUM="*fp32", F_DEN="*fp32", TILES="*i32", COS=f"*{dtype}", SIN=f"*{dtype}",
                    QW=f"*{dtype}", KW=f"*{dtype}")
    types = dict(pointers, eps="fp32", n_queries="i32", qk_scale="fp32", stride_anc="i32", n_slots="i32", kv_rows="i32", **{s_: "i32" for s_ in STRIDES})
    common = dict(GROUP=group, HEAD_DIM=d, BLOCK_N=inv.BLOCK_N, SPLIT_BLOCKS=8, SPLIT_GROUP=inv.SPLIT_GROUP, PACKED=packed,
                  BY_SUM=False, PDL=True)
    for rows in (4, 64, 1024):
        block_m, warps = inv.row_tiles(rows)
        one = dict(common, CHAIN=chain, SPLIT=split, FUSED=split)
        if chain or rows <= inv.TAIL_ROWS:  # one launch: a chain in launch 1's tiles, a small tree in one tail tile
            launches = [(inv._invariant_attention_fwd, dict(one, BLOCK_M=block_m), warps)]
        else:  # a larger tree: one launch in tail tiles, or two — shared blocks (per split or per group), then the
            # per-token blocks and the folds (`invariant_launch_forms.py` chooses)
            launches = [(inv._invariant_attention_fwd, dict(one, BLOCK_M=inv.TAIL_ROWS), 4)]
            launches += [(inv._invariant_prefix_fwd, dict(common, BLOCK_M=block_m, PER_SPLIT=p), warps) for p in (True, False)]
            launches += [(inv._invariant_tail_fwd, dict(common, BLOCK_M=inv.TAIL_ROWS, PER_SPLIT=p), 4) for p in (True, False)]
        for kernel, consts, w in launches:
            stages = 5 if kernel is inv._invariant_prefix_fwd and consts["BLOCK_M"] >= 128 else 3  # as launched
            step = 128 // (2 if dtype == "bf16" else 4)  # one sequence launched early: its committed K/V asked for first
            lines = triton.next_power_of_2(triton.cdiv(d, step))
            prefetches = ((0,) if packed else (0, lines)) if kernel is inv._invariant_attention_fwd else (None,)
            # a plain step's RoPE and K/V write in the launch (`fuse_rope`): one sequence, one token, a tile of rows
            ropes = (0, 1, 2) if kernel is inv._invariant_attention_fwd and not packed and rows == 4 else (0,)  # 2: q/k norm too
            for prefetch, rope in ((p, r) for p in prefetches for r in ropes):
                extra = {} if prefetch is None else dict(PREFETCH=prefetch, STEP=step, ROPE=rope > 0, QK_NORM=rope == 2)
                k = compile_for_sm90(kernel, types, dict(consts, **extra), num_warps=w, num_stages=stages, **LAUNCH)
                assert k.metadata.shared <= SMEM, (dtype, d, kernel.__name__, block_m, k.metadata.shared)
                assert (reads_hints_first(k) if prefetch else waits_first(k)), (kernel.__name__, prefetch, "touches memory before waiting")
                assert not rope or "bar.sync" in k.asm["ptx"].split("griddepcontrol.wait")[-1], "the K/V write's barrier"
    print(f"invariant_attention {dtype} d{d} g{group} chain={chain} split={split}{' packed' if packed else ''}: ok, "
          f"{k.metadata.shared} B shared")
types = dict(O_PART="*fp32", LSE_PART="*fp32", O="*bf16", n_queries="i32", num_splits="i32", stride_on="i32", stride_oh="i32")
assert waits_first(compile_for_sm90(inv._merge_kernel, types, dict(GROUP=4, HEAD_DIM=128, BLOCK_M=128, SPLIT_GROUP=inv.SPLIT_GROUP,
                                                                   PDL=True), num_warps=8, **LAUNCH))
# the plain form (q/k/v, logits), the residual epilogue (o_proj, down_proj), the swiglu form (gate/up); with the
# norm prologue where the decoder launches them so (q/k/v, gate/up, logits), at Qwen3-8B and SmolLM2-135M shapes
for dtype, out, n, k_, form, norm in (("bf16", "bf16", 6144, 4096, "plain", True), ("bf16", "bf16", 6144, 4096, "plain", False),
                                      ("bf16", "fp32", 151936, 4096, "plain", True), ("bf16", "bf16", 4096, 12288, "residual", False),
                                      ("bf16", "bf16", 12288, 4096, "swiglu", True), ("fp32", "fp32", 64, 64, "swiglu", True),
                                      ("bf16", "bf16", 960, 576, "plain", True), ("bf16", "bf16", 1536, 576, "swiglu", True),
                                      ("bf16", "fp32", 49152, 576, "plain", True)):
    types = dict(X=f"*{dtype}", W=f"*{dtype}", B=f"*{dtype}", R=f"*{dtype}", G=f"*{dtype}", Y=f"*{out}", PART="*fp32",
                 COUNTERS="*i32", M="i32", N="i32", K="i32", chunk="i32", eps="fp32", stride_xm="i32", stride_wn="i32",
                 stride_rm="i32", stride_ym="i32")
    chunk = 1024 if k_ >= 2048 else 192  # linear_chunk as the Qwen3-8B and SmolLM2 shapes would take it
    splits = tuple(sorted({1, inv_linear.k_chunks(k_, chunk)}))  # K in one chunk; in chunks
    for m, split in ((m, s) for m in (1, 64, 128, 256) for s in splits):
        t = inv_linear.launch_tiles(m, n, k_, swiglu=form == "swiglu")
        bk = 64 if split > 1 and (k_ // split) % t.block_k else t.block_k  # as `linear` launches it
        consts = dict(HAS_BIAS=True, RESIDUAL=form == "residual", SWIGLU=form == "swiglu", NORM=norm, SPLIT=split,
                      ACROSS=split > 1 and m <= inv_linear.ACROSS_ROWS, BLOCK_M=t.block_m, BLOCK_N=t.block_n,
                      BLOCK_K=bk, NORM_K=block_k(k_), NORM_UNROLL=inv_rmsnorm.unroll(k_, block_k(k_), t.warps, m, 2 if dtype == "bf16" else 4), BY_SUM=False,
                      INPUTS_FIRST=m == 1, PDL=True)
        step = 128 // (2 if dtype == "bf16" else 4)  # as `linear` launches it early: its weight tile's lines asked for first
        lines = triton.next_power_of_2(triton.cdiv(k_ // split if consts["ACROSS"] else k_, step))
        values = dict(M=m, N=n, K=k_, chunk=k_ // split, stride_xm=k_, stride_wn=k_, stride_rm=n, stride_ym=n)  # as launched
        for prefetch in (0, lines):
            k = compile_for_sm90(inv_linear._linear_kernel, types, dict(consts, PREFETCH=prefetch, STEP=step),
                                 num_warps=t.warps, num_stages=t.stages, values=values, **LAUNCH)
            assert k.metadata.shared <= SMEM, (n, k_, m, form, norm, split, k.metadata.shared)
            assert waits_first(k, prefetches=prefetch > 0), (n, k_, m, form, prefetch, "touches memory before waiting")
            assert split > 1 or m > 1 or epilogue_reads_nothing(k), (n, k_, form, "a one-row launch reads its epilogue's inputs last")
    print(f"invariant_linear {form}{' norm' if norm else ''} {dtype}->{out} N{n} K{k_} chunks {splits}: ok, "
          f"{k.metadata.shared} B shared at M=256")
assert waits_first(compile_for_sm90(inv_rmsnorm._rmsnorm_kernel, dict(X="*bf16", W="*bf16", Y="*bf16", H="i32", eps="fp32",
                   stride_x="i32", stride_y="i32"), dict(BLOCK_K=block_k(4096), PDL=True), **LAUNCH))
print("invariant_rmsnorm: ok")
# per_row: a packed batch's tokens, each written to its own sequence's pool row
for dtype, hq, hkv, d, qk_norm, slots, per_row in (("bf16", 32, 8, 128, True, True, False), ("fp32", 6, 2, 24, True, True, False),
                                                  ("bf16", 9, 3, 64, False, False, False), ("bf16", 32, 8, 128, True, False, True)):
    types = dict(QKV=f"*{dtype}", COS=f"*{dtype}", SIN=f"*{dtype}", QW=f"*{dtype}", KW=f"*{dtype}", Q=f"*{dtype}",
                 K_ROWS=f"*{dtype}", V_ROWS=f"*{dtype}", SLOTS="*i32", PREFIX="*i32", eps="fp32", stride_qkv="i32",
                 stride_cos="i32", stride_q="i32", stride_row="i32", Hq="i32", Hkv="i32", D="i32")
    consts = dict(BLOCK_HQ=triton.next_power_of_2(hq), BLOCK_HKV=triton.next_power_of_2(hkv),
                  BLOCK_D=triton.next_power_of_2(d), QK_NORM=qk_norm, HAS_SLOTS=slots, PER_ROW=per_row, PDL=True)
    k = compile_for_sm90(inv_rope._rope_write_kernel, types, consts, **LAUNCH)
    assert waits_first(k) and loads_before_stores(k), (dtype, hq, hkv, d, "a store before a load: one more memory latency in turn")
    print(f"invariant_rope_write {dtype} Hq{hq} Hkv{hkv} D{d} qk_norm={qk_norm} slots={slots} per_row={per_row}: ok")
# the round's small kernels (issue 18): the greedy walk per tree size class; the staged K/V move for
# K+V through a slot map (paged gather), K+V of a dense cache with a deep path, the remap's int32 map
from jetspec.caches import triton_rows  # noqa: E402
from jetspec.verifiers import triton_walk  # noqa: E402

types = dict(tokens_ptr="*i64", parents_ptr="*i64", ends_ptr="*i64", choice_ptr="*i64", packed_ptr="*i64", n="i32", d="i32")
for block in (32, 512):
    assert compile_for_sm90(triton_walk._walk, types, dict(BLOCK=block)).asm["ptx"]
    print(f"greedy_walk BLOCK{block}: ok")
for dtype, paired, slots, block_m, block_c in (("bf16", True, True, 16, 256), ("fp32", True, False, 512, 16),
                                               ("i32", False, False, 16, 16)):
    types = dict(first_ptr=f"*{dtype}", second_ptr=f"*{dtype}", slots_ptr="*i32" if slots else "*i64", keep_ptr="*i64",
                 start="i32", m="i32", layer_stride="i32", width="i32")
    consts = dict(PAIRED=paired, SLOTS=slots, BLOCK_M=block_m, BLOCK_C=block_c)
    assert compile_for_sm90(triton_rows._move, types, consts).asm["ptx"]
    print(f"row_move {dtype} paired={paired} slots={slots} m{block_m} c{block_c}: ok")
# the batched step's device build in one launch: the default drafter's rows with a lookup trie and a tail,
# rows alone, a wide budget
from jetspec.scorers import best_first_kernel  # noqa: E402

types = dict(tok_ptr="*i64", lp_ptr="*fp32", ttok_ptr="*i64", tpar_ptr="*i64", tlp_ptr="*fp32", tdep_ptr="*i64", root_ptr="*i64",
             plen_ptr="*i64", fscr_ptr="*fp32", iscr_ptr="*i64", out_ptr="*i64", total_cols="i32", levels="i32", rows="i32",
             hops="i32")
for d, k, width, budget in ((7, 16, 64, 16), (7, 16, 0, 16), (7, 16, 32, 64)):
    assert compile_for_sm90(best_first_kernel._grow_kernel, types, best_first_kernel.constants(d, k, width, budget)).asm["ptx"]
    print(f"grow D{d} K{k} L{width} B{budget}: ok")
sys.exit(0)
