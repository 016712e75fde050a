"""Shared pieces of the CPU schedule rules: the host's vector shape, block classification and the
small schedule moves every rule uses (inlining elementwise blocks, parallel + vector loops)."""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

# Below this much work (output elements, or multiply-adds for GEMM-like kernels) a parallel loop
# costs more than it saves: waking a worker takes microseconds, and on a loaded machine a
# descheduled worker stalls the whole kernel (LeNet-5 at batch 1 ran 10x slower parallel, every
# loop parallel). Products from 2^17 multiply-adds run in parallel: NIC's per-step LSTM and
# vocabulary products (128-256 x 1000-1024) below 2^20 left a second thread idle (2 threads,
# whole model: 1.68 -> 1.12 ms; 1 thread, LeNet-5, MobileNetV3-Small, RegNetX-400MF,
# EfficientNet-B0 unchanged). Elementwise, copy and pooling loops from 2^14 outputs
# (was 2^16: 2 threads, MobileNetV3-Small 2.29 -> 2.18 ms, NIC 1.46 -> 1.37; LeNet-5, DeepLabV3
# and EfficientNet-B0 unchanged).
PARALLEL_MIN_ELEMENTS = 1 << 14
PARALLEL_MIN_MACS = 1 << 17


@dataclass(frozen=True)
class VectorShape:
    """fp32 lanes per SIMD register and registers the micro-kernels may keep as accumulators;
    `vnni`: the CPU has AVX-512 VNNI (vpdpbusd: u8 x s8 dot products into int32), `avx_vnni`:
    AVX-VNNI (the same on 256-bit registers, without AVX-512: Alder Lake, Sierra Forest);
    `bf16`: it has AVX512-BF16 (vdpbf16ps: bfloat16 pair products into float32); `vbmi`:
    AVX512-VBMI (vpermi2b: byte lookups in two registers); `amx`: the AMX tile
    products it has ("amx-int8", "amx-bf16": LLVM's feature names); `l1d`: bytes of L1 data
    cache per core (`l1d_bytes`); `registers`: the vector registers (ymm0-15, zmm0-31);
    `split_512`: the core runs a 512-bit instruction as two 256-bit halves (AMD Zen 4), so
    256-bit vectors do as much arithmetic per cycle; `vnni_pairs`: AVX-VNNI tiles of 8
    accumulators take two input-channel groups a step (`conv2d_int8.PAIRED_TILE`: AMD cores,
    `VNNI_PAIR_CPUS`)."""
    lanes: int
    accumulators: int
    vnni: bool = False
    avx_vnni: bool = False
    amx: tuple[str, ...] = ()
    bf16: bool = False
    vbmi: bool = False
    l1d: int = 32 * 1024
    registers: int = 16
    split_512: bool = False
    vnni_pairs: bool = False

    @staticmethod
    def of(target) -> "VectorShape":
        """AVX-512 (32 zmm) where the target's CPU has it, AVX2 (16 ymm) otherwise; detected
        from the target's `mcpu` through LLVM, so a cross-compile target is honoured too."""
        from tvm.target.codegen import target_has_features
        mcpu = str(target.attrs.get("mcpu", ""))
        l1d = l1d_bytes(mcpu)
        if target_has_features("avx512f", target):
            return VectorShape(lanes=16, accumulators=28, registers=32,
                               vnni=bool(target_has_features("avx512vnni", target)),
                               amx=tuple(f for f in ("amx-int8", "amx-bf16")
                                         if target_has_features(f, target)),
                               bf16=bool(target_has_features("avx512bf16", target)),
                               vbmi=bool(target_has_features("avx512vbmi", target)), l1d=l1d,
                               split_512=mcpu in SPLIT_512)
        if target_has_features("avx2", target):
            avx_vnni = bool(target_has_features("avxvnni", target))
            return VectorShape(lanes=8, accumulators=12, l1d=l1d, avx_vnni=avx_vnni,
                               vnni_pairs=avx_vnni and mcpu.startswith(VNNI_PAIR_CPUS))
        return VectorShape(lanes=4, accumulators=12, l1d=l1d)


# LLVM CPUs (`mcpu`) whose cores have 48 KiB of L1 data cache: Intel's since Ice Lake (the
# P-cores of the hybrid parts) and AMD's Zen 5. Every other x86 core LLVM names has 32 KiB or
# less, the size assumed for a CPU not listed (LLVM does not tell a target's cache sizes).
L1D_48_KIB = frozenset({
    "icelake-client", "icelake-server", "tigerlake", "rocketlake", "alderlake", "raptorlake",
    "meteorlake", "arrowlake", "arrowlake-s", "lunarlake", "pantherlake", "wildcatlake",
    "novalake", "sapphirerapids", "emeraldrapids", "graniterapids", "graniterapids-d",
    "diamondrapids", "znver5"})


# LLVM CPUs with AVX-512 whose cores execute 512-bit instructions as two 256-bit halves.
SPLIT_512 = frozenset({"znver4"})

# Prefixes of the LLVM CPUs whose AVX-VNNI tiles of 8 accumulators take two input-channel groups
# a step (`conv2d_int8.PAIRED_TILE`): AMD's. On an AMD Zen 5 run as an AVX-VNNI CPU, pairs took
# 0.92-0.95 of whole int8 models' time; on an Intel Xeon's cores (model 167; the CPUs with
# AVX-VNNI and no AVX-512 are Intel's: Alder Lake to Arrow Lake, Sierra Forest), alderlake
# builds, one thread, VGG-11 and ResNet-18 took 1.22 and 1.18x their unpaired time (68.9 / 56.5
# and 16.9 / 14.2 ms), SqueezeNet 1.1 and Inception-v3 0.99 and 1.02: the second group's vpaddd
# and zeroing cost more than the latency they hide there.
VNNI_PAIR_CPUS = ("znver",)


def l1d_bytes(mcpu: str) -> int:
    """L1 data cache per core of the LLVM CPU `mcpu`, in bytes (32 KiB where not known)."""
    return (48 if mcpu.replace("_", "-") in L1D_48_KIB else 32) * 1024


# TVM's tables of tensor intrinsics, op attributes and TIR pipelines belong to the process, and
# a model's functions are scheduled and built in several threads (`dispatch.schedule_module`,
# `parallel_build.py`): what graphopt registers there, each once per process, it registers under
# this lock (`registers_with_tvm`). Re-entrant: a registration may make another.
_REGISTERING = threading.RLock()


def registers_with_tvm(register):
    """Decorator: `register`, which registers something in one of TVM's process-wide tables once
    per process (a tensor intrinsic, an op attribute, a TIR pipeline), runs under one
    process-wide lock, so that no thread sees it half-registered or registers it twice."""
    @functools.wraps(register)
    def locked(*args, **kwargs):
        with _REGISTERING:
            return register(*args, **kwargs)
    return locked


def accumulator_read(block) -> int | None:
    """The index of the writer `block`'s read of its conv tile's accumulators (its local
    buffer, [N, O / block, H, W, block]), or None where its local read is not that."""
    index = next((i for i, r in enumerate(block.reads) if r.source.scope() == "local"), None)
    if index is None or len(block.reads[index].source.shape) != 5:
        return None
    return index


def is_reduction(block) -> bool:
    from tvm import tirx
    return any(iv.iter_type == tirx.IterVar.CommReduce for iv in block.iter_vars)


def iter_kinds(block) -> str:
    """"S"/"R" per block iteration variable, e.g. "SSSSRRR" for conv2d."""
    from tvm import tirx
    return "".join("R" if iv.iter_type == tirx.IterVar.CommReduce else "S"
                   for iv in block.iter_vars)


def extent(loop, sch) -> int:
    """The constant trip count of a loop of `sch`."""
    return int(sch.get(loop).extent)


def repeats_if_computed_at(sch, block, loop) -> float:
    """How many times over `block` would compute the buffer it writes if computed at `loop`,
    each iteration computing the region it reads (1.0: no element twice). Tried on a copy of
    `sch` (a copy keeps the block and loop handles), which is then dropped."""
    trial = sch.copy()
    trial.compute_at(block, loop)
    computed = _product(extent(l, trial) for l in trial.get_loops(block))
    return computed / _product(int(d) for d in trial.get(block).writes[0].source.shape)


def blocks_of(sch):
    """All blocks under the root, in program order."""
    root = sch.get_sblock("root")
    return sch.get_child_blocks(root)


def inline_elementwise(sch, keep) -> None:
    """Inline every block that is not a reduction, not a function output and not in `keep` into its
    consumers (or, failing that, into its producer), to a fixed point. A move whose block would
    come out larger than `INLINE_MAX_NODES`, or with selects nested deeper than
    `INLINE_MAX_SELECT_DEPTH` (`within_inline_limits`), is not made: that block stays a buffer
    of its own, which the rule schedules as it schedules any block left."""
    from tvm.s_tir import ScheduleError
    changed = True
    while changed:
        changed = False
        for block in blocks_of(sch):
            if any(sch.get(block).same_as(sch.get(k)) for k in keep) or \
                    is_reduction(sch.get(block)):
                continue
            if _is_output(sch, block):
                continue
            for reverse in (False, True):
                if not within_inline_limits(sch, block, reverse):
                    continue
                if reverse:
                    changed = reverse_compute_inline(sch, block)
                else:
                    try:
                        sch.compute_inline(block)
                        changed = True
                    except ScheduleError:  # e.g. read by a reduction in another layout
                        pass
                if changed:
                    break
            if changed:
                break


def reverse_compute_inline(sch, block) -> bool:
    """`sch.reverse_compute_inline(block)` where TVM can make it; whether it was made. On a
    block reading its producer with a stride (a strided slice of a pool or of a concatenation)
    TVM 0.27 stops with an internal error while inverting the index map, not with a
    ScheduleError; as with a ScheduleError the schedule is left as it was (TVM replaces the
    scope's statement only once the new one is built), and so is the block."""
    from tvm.error import InternalError
    from tvm.s_tir import ScheduleError
    if _producers_read_elsewhere(sch, block):
        return False
    try:
        sch.reverse_compute_inline(block)
        return True
    except (ScheduleError, InternalError):
        return False


def _producers_read_elsewhere(sch, block) -> bool:
    """Whether a producer of `block` has readers besides `block`. TVM's reverse_compute_inline
    moves `block` into its producer all the same, which then no longer writes its own buffer:
    the other readers' loads are left without a writer, and the build fails ("Buffer ... is
    used before its definition": a QDQ average pool read by a maximum and by a multiply chain,
    whose chain was moved into the pool's columns pass)."""
    consumer = sch.get(block)
    return any(not reader.same_as(consumer) for producer in sch.get_producers(block)
               for reader in _readers(sch, producer))


# Inlining writes a block's expression in place of every load of its buffer, so a chain of
# elementwise ops that each read their input more than once grows geometrically: a 2x2 max
# pool (each NaN-aware maximum reads one side twice) of a concatenation, then SiLU (its fast
# exp reads its input five times) and hard-swish made one block of 51,012 nodes, which
# TVM's simplifiers took 47 s to lower (136 s in bfloat16; 112 s in float32 since max pools
# write each value twice instead of through Lets); cut at this limit, 1-3 s. No move
# made for the zoo's 25 models, float32, bfloat16 or int8, comes near it: the largest is
# 2,251 nodes (DCGAN's generator's output, counted with the indices a producer is read at,
# `_index_growth`), so the limit changes none of their kernels.
INLINE_MAX_NODES = 4000


def within_inline_limits(sch, block, reverse: bool = False) -> bool:
    """Whether inlining `block` (`compute_inline`, or with `reverse` `reverse_compute_inline`)
    makes no block larger than INLINE_MAX_NODES nor nests selects deeper than
    INLINE_MAX_SELECT_DEPTH."""
    pairs = _inline_pairs(sch, block, reverse)
    return _nodes_after(pairs, reverse) <= INLINE_MAX_NODES and \
        _select_depth_after(pairs) <= INLINE_MAX_SELECT_DEPTH


def _inline_pairs(sch, block, reverse: bool) -> list:
    """(producer, consumer) block statements that inlining `block` would merge: `block` and
    each of its consumers, or with `reverse` each of its producers and `block`."""
    if reverse:
        return [(sch.get(producer), sch.get(block)) for producer in sch.get_producers(block)]
    pairs = [(sch.get(block), sch.get(consumer)) for consumer in sch.get_consumers(block)]
    if not pairs:   # readers in another scope (a concatenation's pieces): found by a walk
        pairs = [(sch.get(block), reader) for reader in _readers(sch, block)]
    return pairs


def _nodes_after(pairs, reverse: bool) -> int:
    """The size, in IR nodes, of the largest block that inlining would make of `pairs`
    (`_inline_pairs`): each consumer with the producer's expression in place of its loads
    (`compute_inline`), or with `reverse`, the block with its producer's expression in place
    of its loads of it (`reverse_compute_inline`)."""
    # the producer's expression, counted once for all its consumers
    own = expression_nodes(pairs[0][0].body, None)[0] if pairs and not reverse else None
    largest = 0
    for stmt, consumer in pairs:
        produced = own if own is not None else expression_nodes(stmt.body, None)[0]
        consumed, loads = expression_nodes(consumer.body, stmt.writes[0].source)
        grown = loads * max(produced - 1, 0)
        if not reverse:
            grown += _index_growth(stmt, consumer.body)
        largest = max(largest, consumed + grown)
    return largest


def _readers(sch, block) -> list:
    """The blocks of the function that read what `block` writes, wherever they are nested
    (TVM's `get_consumers` lists those in `block`'s own scope only: a block left beside a
    concatenation's pieces, inlined into them unmeasured, grew a quantized concatenation of
    two sigmoid-gated slices to megabytes of IR and minutes of build)."""
    import tvm_ffi
    from tvm.s_tir import SBlock
    buffers = [region.source for region in sch.get(block).writes]
    found = []
    tvm_ffi.structural_walk(sch.mod["main"].body, [(SBlock, lambda b: found.append(b) if any(
        region.source.same_as(buffer) for region in b.reads for buffer in buffers) else None)])
    return found


def _index_growth(producer, consumer_body) -> int:
    """The nodes `compute_inline` adds beyond a copy of `producer`'s expression per load: each
    use of a variable it stores at becomes the index the consumer reads there (a reflection
    pad's index is tens of nodes: a quantized Mish before one, counted without this, grew to
    26,369 nodes and took 165 s to build)."""
    import tvm_ffi
    from tvm.tirx.stmt import BufferStore
    load_type, var_type = _load_and_var_types()
    store = producer.body
    if not isinstance(store, BufferStore):
        return 0
    uses = [0] * len(store.indices)

    def on_var(var, visitor):
        for i, index in enumerate(store.indices):
            uses[i] += index.same_as(var)

    tvm_ffi.structural_visit(store.value, [(var_type, on_var)])
    grown = [0]

    def on_load(load, visitor):
        if load.source.same_as(store.buffer):
            grown[0] += sum(n * (expression_nodes(index, None)[0] - 1)
                            for n, index in zip(uses, load.indices))
        for index in load.indices:
            visitor.visit(index)

    tvm_ffi.structural_visit(consumer_body, [(load_type, on_load)])
    return grown[0]


# TVM's simplifiers take far longer per node on nested selects (each branch simplified under
# its condition and those above it): clips and relus alternating (2 and 1 levels each) took,
# inlined into one block, 0.6 s to build at 6 levels, 5.4 s at 8 (1,008 nodes), 32 s at 9
# (1,969 nodes); cut at this depth, 0.2-0.6 s. No move made for the zoo's models nests them
# deeper than 2 in float32 and bfloat16 (the MobileNets' relu6 and hard-swish) or 5 in int8
# (the style transfer's quantized epilogues), so the limit changes none of their kernels.
INLINE_MAX_SELECT_DEPTH = 6


def _select_depth_after(pairs) -> int:
    """An upper bound on how deeply selects nest in the block that inlining would make of
    `pairs` (`_inline_pairs`): each producer's depth on top of its consumer's."""
    return max((select_depth(producer.body) + select_depth(consumer.body)
                for producer, consumer in pairs), default=0)


def select_depth(stmt) -> int:
    """How deeply selects nest in `stmt`, a walk of TVM's structural visitor."""
    import tvm_ffi
    select_type, _ = _select_and_cast_types()
    level, deepest = [0], [0]

    def on_select(node, visitor):
        level[0] += 1
        deepest[0] = max(deepest[0], level[0])
        visitor.default_visit(node)
        level[0] -= 1

    tvm_ffi.structural_visit(stmt, [(select_type, on_select)])
    return deepest[0]


def expression_nodes(stmt, buffer) -> tuple[int, int]:
    """IR nodes in `stmt` (a block's body), and how many of them load from `buffer`. A
    variable or buffer counts as one node (its type is not walked), a load as one node and its
    indices. A walk of TVM's own structural visitor: TIR's Python API has no node counter."""
    import tvm_ffi
    load_type, var_type = _load_and_var_types()
    count = [0, 0]

    def on_load(load, visitor):
        count[0] += 1
        count[1] += buffer is not None and load.source.same_as(buffer)
        for index in load.indices:
            visitor.visit(index)

    def on_var(var, visitor):
        count[0] += 1

    def on_node(node, visitor):
        count[0] += 1
        visitor.default_visit(node)

    tvm_ffi.structural_visit(stmt, [(load_type, on_load), (var_type, on_var), (object, on_node)])
    return count[0], count[1]


@functools.lru_cache(maxsize=None)
def _load_and_var_types() -> tuple[type, type]:
    """The Python classes of a TIR buffer load and of a variable (buffers are variables in TVM
    0.27's TIR), for the structural visitor's dispatch."""
    from tvm import tirx
    buffer_var = tirx.decl_buffer((1,), "int32")
    return type(tirx.BufferLoad(buffer_var, [0])), type(buffer_var)


@functools.lru_cache(maxsize=None)
def _select_and_cast_types() -> tuple[type, type]:
    """The Python classes of a TIR select and of a cast."""
    from tvm import tirx
    return type(tirx.Select(True, tirx.const(0), tirx.const(1))), \
        type(tirx.Cast("float32", tirx.const(0)))


def _is_output(sch, block) -> bool:
    outputs = sch.get_output_blocks(sch.get_sblock("root"))
    return any(sch.get(block).same_as(sch.get(o)) for o in outputs)


def _contiguous_rows(sch, block, loops: int) -> bool:
    """Whether every buffer `block` reads and writes is indexed by its innermost iterator in
    the last dimension alone, as that iterator itself (contiguous), or not at all (broadcast):
    no gathers (a reflection pad's indices) when that loop is vectorized."""
    b = sch.get(block)
    if len(b.iter_vars) != loops:
        return False
    var = b.iter_vars[-1].var
    for region in [*b.reads, *b.writes]:
        if not region.region:         # a scalar: the same for every element
            continue
        *rest, last = (r.min for r in region.region)
        if any(_mentions(i, var) for i in rest):
            return False
        if _mentions(last, var) and not last.same_as(var):
            return False
    return True


def _mentions(expr, var) -> bool:
    """Whether the TIR expression `expr` uses the variable `var`."""
    from tvm.tirx.analysis import undefined_vars
    return any(v.same_as(var) for v in undefined_vars(expr, []))


def schedule_elementwise(sch, block, lanes: int) -> None:
    """Parallel over the fused outer loops when there is enough work; the innermost loop stays
    whole (fusing it in would turn every index into div/mod) and is vectorized by `lanes` when
    they divide it; where they do not and every access along it is contiguous or a broadcast,
    a row longer than a vector is split into its whole vectors and a shorter tail vector
    (`loop_partition`), a shorter row vectorized whole (squeeze-excite scales on 14x14 and 7x7
    planes were scalar loops: EfficientNet-B0, 1 thread, 8.5 -> 8.1 ms; a reflection pad's
    gathers stay scalar, 2-3x faster so). A 56-wide row of an int8 squeeze-excite's
    dequantize-scale-quantize chain, one 56-lane vector, took 378 vinsertps to legalize; in
    pieces, int8 MobileNetV3-Small ran 0.92x its time, EfficientNet-B0 0.94-0.97x, the builds
    interleaved (float32 within the host's noise, 0.98-1.03x)."""
    loops = sch.get_loops(block)
    if not loops:
        return
    *outer, inner = loops
    total = _product(extent(l, sch) for l in loops)
    width = extent(inner, sch)
    contiguous = width % lanes != 0 and _contiguous_rows(sch, block, len(loops))
    scalar = _copies_one_bfloat16_per_row(sch, block)
    if outer and total >= PARALLEL_MIN_ELEMENTS:
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
    elif not outer and total >= PARALLEL_MIN_ELEMENTS * 4 and width % lanes == 0 and not scalar:
        inner, row = sch.split(inner, [None, lanes])
        sch.parallel(inner)
        sch.vectorize(row)
        return
    if scalar:
        return
    if width % lanes == 0:
        sch.vectorize(sch.split(inner, [None, lanes])[1])
    elif contiguous and width > lanes:
        if _shares_a_buffer_name(sch, block):
            return      # TVM cannot partition its loop: the row stays scalar
        whole, tail = sch.loop_partition(inner, [width // lanes * lanes, None])
        sch.vectorize(sch.split(whole, [None, lanes])[1])
        sch.vectorize(tail)
    elif contiguous and width > 1:
        sch.vectorize(inner)


def _copies_one_bfloat16_per_row(sch, block) -> bool:
    """Whether `block` copies bfloat16 from one element per row (an edge pad of a one-column
    map, a nearest resize of a 1x1 map; casts to float32 and back included): TVM's bfloat16
    legalization leaves a vector store of such a broadcast load typed bfloat16 into its uint16
    buffer and the build fails, so the row stays scalar."""
    from tvm.tirx.stmt import BufferStore
    b = sch.get(block)
    if not b.iter_vars or not isinstance(b.body, BufferStore) or \
            str(b.body.buffer.dtype) != "bfloat16":
        return False
    value = b.body.value
    while isinstance(value, _select_and_cast_types()[1]):   # a round trip through float32
        value = value.value
    if not isinstance(value, _load_and_var_types()[0]):
        return False
    var = b.iter_vars[-1].var
    return not any(_mentions(r.min, var) for region in b.reads for r in region.region)


def _shares_a_buffer_name(sch, block) -> bool:
    """Whether `block` reads or writes two buffers of one name (TOPI's log_softmax writes its
    output "compute" from a sum it also named "compute"): TVM's `loop_partition` takes one for
    the other and fails with an internal error (a region of one's rank on the other), leaving
    the schedule broken."""
    b = sch.get(block)
    buffers = {region.source for region in [*b.reads, *b.writes]}
    return len({str(buffer.name) for buffer in buffers}) < len(buffers)


def schedule_reduction(sch, block, lanes: int) -> None:
    """A reduction that is not a tiled GEMM/conv (pooling, mean, softmax's max and sum, small or
    grouped convs): parallel over the outer spatial loops; when the innermost spatial loop is a
    short row (2..8 vectors), the reduction moves outside it and the row becomes one vector
    accumulator (a scalar reduction would wait on its add latency every step); a long
    reduction into single values is split into vector partial results
    (`_vector_partial_sums`)."""
    from tvm.s_tir import ScheduleError
    kinds = iter_kinds(sch.get(block))
    loops = sch.get_loops(block)
    if len(loops) != len(kinds):  # already moved by another rule
        return
    spatial = [l for l, k in zip(loops, kinds) if k == "S"]
    reduce = [l for l, k in zip(loops, kinds) if k == "R"]
    row = spatial[-1] if spatial and 2 <= extent(spatial[-1], sch) <= 8 * lanes else None
    outer = spatial[:-1] if row is not None else spatial
    sch.reorder(*outer, *reduce, *([row] if row is not None else []))
    work = _product(extent(l, sch) for l in spatial + reduce)
    if outer and work >= PARALLEL_MIN_ELEMENTS:
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        if extent(fused, sch) > 1:
            sch.parallel(fused)
    # TVM's bfloat16 legalization cannot store a vector of bfloat16 accumulators (max pools):
    # those rows stay scalar.
    vector_row = row is not None and str(sch.get(block).writes[0].source.dtype) != "bfloat16"
    if vector_row and reduce:
        try:
            sch.vectorize(row)  # before decompose_reduction, which leaves loops unvectorizable
            init = sch.decompose_reduction(block, reduce[0])
            sch.vectorize(sch.get_loops(init)[-1])
        except ScheduleError:  # schedule primitives check before they change anything:
            pass           # the function stays valid, with the row loop scalar
    elif reduce and _product(extent(r, sch) for r in reduce) <= 16:
        for r in reduce:
            sch.unroll(r)
    elif reduce and row is None:
        _vector_partial_sums(sch, block, reduce, lanes)


def _vector_partial_sums(sch, block, reduce, lanes: int) -> None:
    """A long reduction into one value per output (global pooling, a softmax over the last
    axis) along each input's last, contiguous axis: the reduction loops fused and split into
    `width` interleaved partial results (`rfactor`, up to four vector accumulators stepping
    over contiguous input), then reduced across them per output. A scalar reduction waits on
    its add latency every step (one AVX-512 core, ms: a global average pool of 144 ch 56x56
    0.31 -> 0.066, 672 ch 14x14 0.057 -> 0.014; ORT's 0.03 and 0.01). Reducers rfactor does
    not know (the NaN-propagating max of max pools) stay scalar."""
    from tvm.s_tir import ScheduleError
    stmt = sch.get(block)
    kinds = iter_kinds(stmt)
    if _product(int(iv.dom.extent) for iv, k in zip(stmt.iter_vars, kinds) if k == "S") <= 1:
        return   # a reduction to one value: rfactor fails inside TVM without spatial iterations
    if kinds.rstrip("R") != kinds.replace("R", "") or not all(
            region.region[-1].min.same_as(stmt.iter_vars[-1].var) for region in stmt.reads):
        return   # the reduction does not walk each input's last axis innermost
    total = _product(extent(r, sch) for r in reduce)
    widths = [w for w in (4 * lanes, 2 * lanes, lanes) if total % w == 0 and total >= 2 * w]
    width = widths[0] if widths else max(
        (d for d in range(4, lanes) if total % d == 0 and total >= 2 * d), default=0)
    if not width:
        return

    def split(target):
        fused = target.fuse(*reduce) if len(reduce) > 1 else reduce[0]
        _, lane = target.split(fused, [None, width])
        return target.rfactor(lane, factor_axis=len(stmt.writes[0].region))

    try:
        split(sch.copy())   # rfactor refuses unknown reducers after the split has been made
    except ScheduleError:
        return
    partial = split(sch)
    loops = sch.get_loops(partial)
    sch.reverse_compute_at(block, loops[-3])   # per output, under its spatial loops
    sch.vectorize(loops[-1])
    init = sch.decompose_reduction(partial, loops[-2])
    sch.vectorize(sch.get_loops(init)[-1])


def buffer_bytes(buffer) -> int | None:
    """A TIR buffer's size in bytes, or None where a dimension is known only at run time."""
    from tvm import DataType
    count = 1
    for extent in buffer.shape:
        if not hasattr(extent, "value"):
            return None
        count *= int(extent.value)
    return count * DataType(buffer.dtype).bits // 8


def _product(values) -> int:
    out = 1
    for v in values:
        out *= v
    return out
