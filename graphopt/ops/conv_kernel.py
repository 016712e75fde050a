"""Lowering of a convolution and its epilogue (bias, residual add, activation) as ONE TVM kernel,
computed the way the node's `Conv2d.algorithm` says: used by `conv2d` and `fused_conv2d`."""
from __future__ import annotations

import numpy as np

from .base import OPAQUE, constant_operand, conv_out_size, expect, relax_constant, relax_type
from .cast import accumulation_dtype
from .epilogue import EPILOGUE, ONEDNN_NO_ACTIVATION


def lower_conv(bb, conv, x, w, b=None, residual=None, activation=None, *, read=None,
               finish=None, finish_operands=(), optional_residual: bool = False):
    """Relax: `activation(conv(x, w) + b + residual)` as one kernel, computed the way
    `conv.algorithm` says (see ops/conv.py's CONV_ALGORITHMS). A float32 kernel may read
    `read(x)` (TE: x as the float32 values it convolves) and end with `finish(sums,
    *finish_operands)` (TE, instead of the bias, residual and activation): the exact integer
    convolutions of `QLinearConv2d.lower_in_float32`. With `optional_residual` the kernel takes
    a residual operand and a run-time switch whether to add it (`FusedConv2d`): without a
    residual, x stands in for it and the switch is off."""
    decision = f"{conv.algorithm} convolution"   # for the error if a weight is not constant
    expect(not conv.computes_integers, f"the {conv.algorithm} algorithm computes quantized "
           f"convolutions (qlinear_conv2d), not float ones")
    expect(not (optional_residual and (conv.algorithm == "onednn" or finish is not None)),
           "an optional residual is added by graphopt's own float epilogue only")
    switch = None
    if optional_residual:
        switch, residual = (0, x) if residual is None else (1, residual)
    if conv.algorithm == "onednn":
        from ..targets.tvm.onednn.lowering import onednn_conv2d
        code, (alpha, beta) = ONEDNN_NO_ACTIVATION, (0.0, 0.0)
        if activation is not None:
            entry = EPILOGUE[activation.name]
            code, (alpha, beta) = entry.onednn, entry.onednn_args(activation)
        bias = constant_operand(b, decision) if b is not None else None
        return onednn_conv2d(conv, x, w, bias, residual, code, alpha, beta)
    from tvm import relax, te, topi
    # Half precision accumulates in float32 through the epilogue and rounds once, at the end,
    # as the reference kernel does.
    dtype = relax_type(x).dtype
    accumulate = "float32" if read is not None else accumulation_dtype(dtype)
    operands, attrs, group_shape = [x], {}, None
    if conv.algorithm == "amx":
        # AMX tiles (bfloat16): the input padded and grouped, the hand-written kernel, and this
        # kernel's epilogue reading its float32 tiles
        from ..targets.tvm.schedules import amx as tiles
        weight_data = constant_operand(w, decision)
        expect(dtype == tiles.BFLOAT16.input, f"the amx convolution takes bfloat16 here, found "
               f"{dtype}")
        acc, out_width = tiles.lower_kernel(bb, x, 0.0, weight_data, conv, tiles.BFLOAT16)
        operands = [acc]
        compute = lambda acc: tiles.from_tiles(acc, weight_data.shape[0],   # noqa: E731
                                               out_width=out_width)
        name = "conv2d_amx_epilogue"
        attrs = tiles.EPILOGUE_ATTRS
    elif conv.algorithm in ("dpbf16", "dpbf16_taps"):
        # vdpbf16ps on pairs of bfloat16 input channels (or of a kernel row's taps of them)
        # into a float32 register tile, this kernel's epilogue computed from it
        from ..targets.tvm.schedules import conv2d_bf16 as dpbf16
        from ..targets.tvm.schedules.amx import from_tiles
        from ..targets.tvm.schedules.conv2d_int8 import row_widths
        weight_data = constant_operand(w, decision)
        expect(dtype == "bfloat16" and dpbf16.applies(conv.groups, weight_data.shape),
               f"the dpbf16 convolution takes bfloat16 convolutions, ungrouped or of groups of "
               f"whole blocks, found {dtype}, groups {conv.groups}, weight {weight_data.shape}")
        row_taps = weight_data.shape[3] if conv.algorithm == dpbf16.ROW_TAPS else 0
        packed = dpbf16.pack_weight(dpbf16.unfold_row_taps(weight_data) if row_taps
                                    else weight_data)
        weight, name = relax_constant(packed, "uint16"), "conv2d_dpbf16"
        # where the rows are computed to whole tiles (`padded_width`), the real ones
        real_width, _, _ = row_widths(conv, relax_type(x).shape[3], weight_data.shape[3])
        compute = lambda x, w: from_tiles(  # noqa: E731
            dpbf16.conv2d_dpbf16(x, w, conv, row_taps), weight_data.shape[0],
            out_width=real_width if conv.padded_width else None)
    elif conv.algorithm == "pointwise":
        # the plane flattened (a view in the VM): a GEMM with the pixels as the vector lanes,
        # the result viewed as NCHW again after the epilogue
        from ..targets.tvm.schedules import pointwise
        weight_data = constant_operand(w, decision)
        n, channels, height, width = (int(d) for d in relax_type(x).shape)
        out_shape = (n, weight_data.shape[0], height, width)
        expect(accumulate == "float32" and pointwise.applies(weight_data.shape[2:], conv.stride,
                                                             conv.padding, conv.dilation,
                                                             conv.groups)
               and weight_data.shape[0] % conv.weight_block == 0,
               f"the pointwise convolution takes float32 (or widened half-precision) 1x1 "
               f"stride-1 unpadded ungrouped "
               f"convolutions with {conv.weight_block}-channel blocks dividing the output "
               f"channels, found {dtype}, weight {weight_data.shape}, stride {conv.stride}, "
               f"padding {conv.padding}, groups {conv.groups}")
        operands = [flattened(bb, x, (n, channels, height * width))]
        if residual is not None:
            residual = flattened(bb, residual, (n, out_shape[1], height * width))
        # half precision: the weight widened here, the input as the kernel reads it
        weight = relax_constant(pointwise.pack_weight(weight_data, conv.weight_block),
                                accumulate)
        name, compute = "conv2d_pointwise", pointwise.pointwise_conv2d
    elif conv.algorithm == "winograd":
        from ..targets.tvm.schedules.winograd import transform_weight, winograd_conv2d
        # half precision: the weight widened before its transform, the input in the kernel's
        # first stage
        u = transform_weight(constant_operand(w, decision).astype(accumulate),
                             conv.weight_block, conv.output_tile)
        weight, compute = relax_constant(u), winograd_conv2d
        name = "conv2d_winograd"
    elif conv.algorithm == "winograd_dpbf16":
        # F(2x2) with its GEMMs on vdpbf16ps: the transformed weight rounded to bfloat16 here,
        # the transformed input in the kernel, both in pairs of input channels
        from ..targets.tvm.schedules.winograd import transform_weight_in_pairs, winograd_conv2d
        weight_data = constant_operand(w, decision)
        expect(dtype == "bfloat16" and weight_data.shape[1] % 2 == 0,
               f"the winograd_dpbf16 convolution takes bfloat16 convolutions of an even number "
               f"of input channels, found {dtype}, weight {weight_data.shape}")
        u = transform_weight_in_pairs(weight_data, conv.weight_block)
        weight, compute = relax_constant(u, "uint16"), winograd_conv2d
        name = "conv2d_winograd_dpbf16"
    elif conv.algorithm == "depthwise":
        from ..targets.tvm.schedules.depthwise import depthwise_conv2d
        weight_data = constant_operand(w, decision)
        channels = relax_type(x).shape[1]
        expect(accumulate == "float32" and conv.groups == weight_data.shape[0] == channels,
               f"the depthwise algorithm computes float32 (or widened half-precision) "
               f"convolutions with one filter per channel, found {dtype}, weight "
               f"{weight_data.shape}, groups {conv.groups}")
        # half precision: the float32 kernel, the weight widened here, the input as it is copied
        taps = weight_data.reshape(weight_data.shape[0], *weight_data.shape[2:])
        weight, name = relax_constant(taps, accumulate), "depthwise_conv2d"
        compute = lambda x, w: depthwise_conv2d(x, w, conv, conv.weight_block)  # noqa: E731
    elif conv.algorithm == "narrow":
        from ..targets.tvm.schedules.narrow import narrow_conv2d
        weight_data = constant_operand(w, decision)
        expect(accumulate == "float32" and conv.groups == 1,
               f"the narrow algorithm computes float32 (or widened half-precision) ungrouped "
               f"convolutions, found {dtype}, groups {conv.groups}")
        # half precision: as the depthwise algorithm
        weight, name = relax_constant(weight_data, accumulate), "narrow_conv2d"
        compute = lambda x, w: narrow_conv2d(x, w, conv, conv.weight_block)  # noqa: E731
    elif conv.algorithm == "narrow_dpbf16":
        # the narrow rule's tiles on vdpbf16ps, a kernel row's taps in pairs
        from ..targets.tvm.schedules import conv2d_bf16 as dpbf16
        weight_data = constant_operand(w, decision)
        expect(dtype == "bfloat16" and conv.groups == 1 and
               dpbf16.pairs_apply(conv, weight_data.shape[3]),
               f"the {conv.algorithm} algorithm computes ungrouped bfloat16 convolutions of "
               f"stride and dilation 1, kernel rows of at least 2 taps, found {dtype}, groups "
               f"{conv.groups}, stride {conv.stride}, dilation {conv.dilation}, kernel "
               f"{weight_data.shape[2:]}")
        weight = relax_constant(dpbf16.pack_weight_pairs(weight_data), "uint16")
        name, kernel_width = "narrow_conv2d_dpbf16", weight_data.shape[3]
        compute = lambda x, w: dpbf16.narrow_conv2d_pairs(  # noqa: E731
            x, w, conv, conv.weight_block, kernel_width)
    elif conv.weight_block:
        # half precision runs the float32 kernel on widened operands (exact: every half value
        # is a float32), accumulating as the reference kernel does
        weight_data = constant_operand(w, decision)
        per_group = weight_data.shape[0] // conv.groups
        expect(conv.groups == 1 or per_group % conv.weight_block == 0
               or per_group < conv.weight_block,
               f"{conv.weight_block}-channel weight blocks that pad groups of {per_group} "
               f"channels each within one block (the conv2d rule's epilogue placement needs it)")
        packed = pack_weight(weight_data, conv.weight_block, conv.groups)
        weight, name = relax_constant(packed, accumulate), "conv2d"
        if conv.groups > 1 and per_group % conv.weight_block:
            group_shape = (conv.groups, per_group)
        compute = lambda x, w: blocked_conv2d(x if x.dtype == accumulate else
                                              topi.cast(x, accumulate), w, conv,
                                              weight_data.shape[0])
    else:
        weight, name = w, "conv2d"
        compute = lambda x, w: topi.nn.conv(x, w, conv.stride, conv.padding, conv.dilation,
                                            conv.groups, "NCHW", "OIHW", out_dtype=accumulate)
    if conv.algorithm != "amx":
        operands.append(weight)
    extras = [e for e in (b, residual) if e is not None] + list(finish_operands)

    def kernel(*args):
        if switch is not None:
            *args, on = args
        inputs = list(args[:len(operands)])
        if read is not None:
            inputs[0] = read(inputs[0])
        y = compute(*inputs)
        rest = list(args[len(operands):])
        if finish is not None:
            y = finish(y, *rest)
            return y if group_shape is None else by_group(y, *group_shape)
        if b is not None:
            bias, conv_out = rest.pop(0), y
            y = te.compute(y.shape, lambda *i: conv_out(*i) + bias[i[1]].astype(conv_out.dtype),
                           name="bias_add")
        if residual is not None:
            add = rest.pop(0)
            add = topi.cast(add, y.dtype) if add.dtype != y.dtype else add
            y = topi.add(y, add) if switch is None else switched_add(y, add, on)
        y = EPILOGUE[activation.name].te(activation, y) if activation is not None else y
        y = topi.cast(y, dtype) if y.dtype != dtype else y
        return y if group_shape is None else by_group(y, *group_shape)

    fused = any(v is not None for v in (b, residual, activation, finish))
    name_hint, attrs = ("fused_" if fused else "") + name, {"op_pattern": OPAQUE, **attrs}
    if switch is None:
        out = bb.call_te(kernel, *operands, *extras, primfunc_name_hint=name_hint,
                         primfunc_attrs=attrs)
        if conv.algorithm == "amx" and residual is None and finish is None:
            tiles.remember_epilogue(bb, out, kernel, [*operands, *extras])
    else:
        out = call_te_switched(bb, kernel, [*operands, *extras], switch, name_hint, attrs)
    if group_shape is not None:     # a view of the kernel's [N, G, O / G, H, W] output
        out = bb.emit(out)
        n, groups, per_group, height, width = (int(d) for d in relax_type(out).shape)
        return relax.op.reshape(out, (n, groups * per_group, height, width))
    return relax.op.reshape(bb.emit(out), out_shape) if conv.algorithm == "pointwise" else out


def by_group(y, groups: int, per_group: int):
    """TE: the NCHW `y` as [N, groups, per_group, H, W] (the kernel's output, viewed as NCHW
    after it). Where the conv2d rule's blocks pad each group's channels (12 a group in blocks
    of 16), the epilogue under a tile then iterates that tile's group and its real channels;
    iterating the output's channels it read the tile as [c // 12, ..., c % 12], and TVM placed
    it under the tile with all 16 of the block's channels, the last 4 of them the next group's,
    which that tile does not compute: written over that group's results by another task."""
    from tvm import te
    n, _, height, width = (int(d) for d in y.shape)
    return te.compute((n, groups, per_group, height, width),
                      lambda b, g, c, i, j: y[b, g * per_group + c, i, j], name="by_group")


def switched_add(y, add, on):
    """TE: y + add where the run-time switch `on` (a TIR int64) is nonzero, else y; `add` is
    not read when it is off."""
    from tvm import te, tirx
    zero = tirx.const(0, y.dtype)
    return te.compute(y.shape, lambda *i: y(*i) + tirx.if_then_else(on != 0, add(*i), zero),
                      name="residual_add")


def call_te_switched(bb, kernel, args, switch: int, name_hint: str, attrs: dict):
    """`bb.call_te(kernel, *args)` for a TE `kernel` whose last parameter is an int64 run-time
    switch, passed as the constant `switch`. Written out because Relax's call_te makes scalar
    parameters of symbolic shapes only; the PrimFunc is built as call_te builds it, so calls
    with either switch value get one kernel (`BlockBuilder.add_func` returns the GlobalVar of
    an equal function)."""
    from tvm import relax, te, tirx
    holders = [te.placeholder([int(d) for d in a.ty.shape], str(a.ty.dtype),
                              a.name if isinstance(a, relax.Var) else f"arg{i}")
               for i, a in enumerate(args)]
    on = tirx.Var("switch", "int64")
    out = kernel(*holders, on)
    func = te.create_prim_func([*holders, on, out], "int64")
    func = func.with_attrs(attrs).without_attr("global_symbol")
    return relax.call_tir(bb.add_func(func, name_hint),
                          [*args, relax.prim_value(tirx.IntImm("int64", switch))],
                          relax.TensorType([int(d) for d in out.shape], out.dtype))


def flattened(bb, value, shape):
    """Relax: `value` viewed as `shape`; where `value` is itself a view of a tensor of that shape
    (the NCHW output of another pointwise conv), that tensor, so that no reshape pair is left
    for TVM to fuse into a copy kernel."""
    import tvm
    from tvm import relax
    binding = bb.lookup_binding(value) if isinstance(value, relax.Var) else None
    if isinstance(binding, relax.Call) and binding.op.same_as(tvm.ir.Op.get("relax.reshape")):
        source = binding.args[0]
        if tuple(int(d) for d in relax_type(source).shape) == tuple(shape):
            return source
    return bb.emit(relax.op.reshape(value, shape))


def pack_weight(weight, block: int, groups: int = 1):
    """OIHW -> [G * ceil(O / G / block), KH, KW, I, block]: the layout the CPU conv2d rule
    streams (a tile step reads `block` output channels of one tap and input channel as whole
    vectors). Each group's output channels are padded with zero filters to whole blocks."""
    o, i, h, k = weight.shape
    per_group = o // groups
    padded = -(-per_group // block) * block
    if padded != per_group:
        grouped = weight.reshape(groups, per_group, i, h, k)
        weight = np.concatenate([grouped, np.zeros((groups, padded - per_group, i, h, k),
                                                   weight.dtype)], axis=1)
    return weight.reshape(-1, block, i, h, k).transpose(0, 3, 4, 2, 1).copy()


def blocked_conv2d(x, packed, conv, out_channels: int):
    """TE of an NCHW convolution reading the weight as `pack_weight` laid it out. Where the
    blocks pad a group's channels, or `conv.padded_width` the rows, the padded tile is computed
    (the extra columns from extra zero padding on the right) and a slice keeps the real
    channels and columns (the epilogue, inlined into it, reads only those)."""
    from tvm import te, topi
    from ..targets.tvm.schedules.conv2d import PADDING_BLOCK
    n, channels, height, width = (int(d) for d in x.shape)
    blocks, k_h, k_w, group_channels, block = (int(d) for d in packed.shape)
    padded_per_group = blocks * block // conv.groups
    (s_h, s_w), (d_h, d_w) = conv.stride, conv.dilation
    top, left, bottom, right = conv.padding
    real_w = conv_out_size(width, k_w, s_w, left, right, d_w)
    out_w = max(conv.padded_width, real_w)
    right += (out_w - real_w) * s_w
    padded = (topi.nn.pad(x, [0, 0, top, left], [0, 0, bottom, right], name=PADDING_BLOCK)
              if (top, left, bottom, right) != (0, 0, 0, 0) else x)
    out_h = conv_out_size(height, k_h, s_h, top, bottom, d_h)
    rc = te.reduce_axis((0, group_channels), "rc")
    ry, rx = te.reduce_axis((0, k_h), "ry"), te.reduce_axis((0, k_w), "rx")

    def channel(o):
        return rc if conv.groups == 1 else o // padded_per_group * group_channels + rc

    tile = te.compute(
        (n, blocks * block, out_h, out_w),
        lambda b, o, i, j: te.sum(padded[b, channel(o), i * s_h + ry * d_h, j * s_w + rx * d_w]
                                  * packed[o // block, ry, rx, rc, o % block], axis=[rc, ry, rx]),
        name="conv2d_nchw")
    if blocks * block == out_channels and out_w == real_w:
        return tile
    per_group = out_channels // conv.groups

    def padded_channel(o):
        return o if conv.groups == 1 else o // per_group * padded_per_group + o % per_group

    return te.compute((n, out_channels, out_h, real_w),
                      lambda b, o, i, j: tile[b, padded_channel(o), i, j], name="real_channels")
