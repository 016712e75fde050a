"""Convolutions and batch normalization (NCHW activations, OIHW / IOHW weights)."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..ir import TensorType
from .base import (Op, accumulator, constant_operand, conv_out_size, expect, expect_float,
                   expect_rank, expect_same_dtype, flag, integer, pair, quad, real, register,
                   relax, relax_constant, relax_type)
from .cast import accumulation_dtype, lower_in_float32


def conv_attributes(op) -> None:
    """Check and normalize the attributes convolutions share (stride, padding, dilation,
    groups; output_padding where the op has it)."""
    for field, convert in (("stride", pair), ("padding", quad), ("output_padding", pair),
                           ("dilation", pair), ("groups", integer)):
        if hasattr(op, field):
            object.__setattr__(op, field, convert(getattr(op, field), field))
    expect(min(op.stride) >= 1 and min(op.dilation) >= 1 and op.groups >= 1
           and min(op.padding) >= 0 and min(getattr(op, "output_padding", (0,))) >= 0,
           f"expected positive stride/dilation/groups and non-negative padding, found {op}")


def expect_nonempty(x: TensorType, w: TensorType) -> None:
    """Zero-size weights or inputs (no channels, no kernel taps, no batch) describe no
    computation a convolution can lower; they are refused rather than compiled to a library
    that cannot load."""
    expect(w.numel > 0, f"expected a weight with no zero dimension, found {w}")
    expect(x.numel > 0, f"expected an input with no zero dimension, found {x}")


# How a convolution is computed on its target, decided by a target pass (see
# graphopt/targets/tvm/passes/select_conv_algorithm.py) and lowered as recorded:
#   direct    the convolution itself (graphopt's conv2d schedule rule, or dlight on CUDA); with
#             a `weight_block`, the weight is packed at lowering into blocks of that many output
#             channels ([O / block, KH, KW, I, block], `conv_kernel.pack_weight`), each group's
#             last block padded with zero filters where its channels do not fill it, and with a
#             `padded_width` each output row computed to that width (whole register tiles)
#   winograd  Winograd F(m x m, 3x3) with m = `output_tile` (2 or 4), the weight transformed
#             at lowering into blocks of `weight_block` output channels
#             (targets/tvm/schedules/winograd.py)
#   onednn    a call of oneDNN's convolution (targets/tvm/onednn/)
#   pointwise a 1x1 stride-1 convolution as a GEMM over the flattened plane with the pixels as
#             the vector lanes, the weight packed at lowering as [O / block, I, block] with
#             `weight_block` dividing the output channels (targets/tvm/schedules/pointwise.py)
#   depthwise a depthwise convolution (groups == input == output channels) vectorized along
#             output rows of whole blocks of `weight_block` columns (the row padded at lowering;
#             targets/tvm/schedules/depthwise.py), the weight as [C, KH, KW]
#   narrow    a convolution with too few output channels to fill a vector register, vectorized
#             along output rows of whole blocks of `weight_block` columns (the row padded at
#             lowering; targets/tvm/schedules/narrow.py), the weight as written (OIHW)
#   amx       AMX tiles (targets/tvm/schedules/amx.py): bfloat16 convolutions (tdpbf16ps) and
#             qlinear_conv2d (tdpbusd), input and weight packed at lowering
#   vnni      (qlinear_conv2d only) uint8 x int8 -> int32 by vpdpbusd (AVX-512 VNNI, AVX-VNNI), or
#   pmaddubsw vpmaddubsw + vpmaddwd (weights whose int16 pair sums cannot saturate), or
#   pmaddwd   vpmaddwd on int16-widened operands; the weight packed at lowering into blocks of
#             `weight_block` output channels (targets/tvm/schedules/conv2d_int8.py), or
#   pmaddwd_s8  vpmaddwd with the weight kept in int8 and widened as it loads (convs of few
#             output pixels, whose weights stream from memory)
#   dpbf16    (bfloat16 only) AVX512-BF16's vdpbf16ps: pairs of input channels into float32,
#             the weight packed at lowering into blocks of `weight_block` (16) output channels
#             (targets/tvm/schedules/conv2d_bf16.py)
#   dpbf16_taps  (bfloat16 only) dpbf16 with each kernel row's taps of every input channel as
#             the pairs: the input copied unfolded along the rows, per output column, for
#             images of few channels (targets/tvm/schedules/conv2d_bf16.py, ROW_TAPS)
#   winograd_dpbf16  (bfloat16 only) Winograd F(2x2, 3x3) with its GEMMs on vdpbf16ps: the
#             transformed input and weight rounded to bfloat16, in pairs of input channels, the
#             weight in blocks of `weight_block` output channels (schedules/winograd.py)
# A qlinear_conv2d may also be computed by the float32 "depthwise", blocked "direct" or "narrow"
# kernel, exactly (QLinearConv2d.lower_in_float32): the grouped convolutions the dot-product
# kernels do not compute, and those with so few channels that their tiles would be mostly
# padding.
EXACT_FLOAT_CONV_ALGORITHMS = ("depthwise", "direct", "narrow")
INTEGER_CONV_ALGORITHMS = ("vnni", "pmaddubsw", "pmaddwd", "pmaddwd_s8")
QUANTIZED_CONV_ALGORITHMS = ("amx", *INTEGER_CONV_ALGORITHMS)
CONV_ALGORITHMS = ("direct", "winograd", "onednn", "depthwise", "narrow", "pointwise", "dpbf16",
                   "dpbf16_taps", "winograd_dpbf16", "narrow_dpbf16", *QUANTIZED_CONV_ALGORITHMS)
# Algorithms whose `weight_block` is required: (what it counts, for the error).
BLOCKED_ALGORITHMS = {"winograd": "output channels", "depthwise": "output columns",
                      "narrow": "output columns", "narrow_dpbf16": "output columns",
                      "pointwise": "output channels",
                      "dpbf16": "output channels", "dpbf16_taps": "output channels",
                      "winograd_dpbf16": "output channels"}


def add_channel_bias(bb, y, b):
    """Relax: `y` plus a per-channel bias [C] broadcast over NCHW (no-op without a bias)."""
    if b is None:
        return y
    R = relax().op
    return R.add(bb.emit(y), R.reshape(b, (1, -1, 1, 1)))


@register
@dataclass(frozen=True)
class Conv2d(Op):
    """2-D convolution: x [N, C, H, W], weight [O, C/groups, KH, KW], optional bias [O]."""

    name = "conv2d"
    arity = (2, 3)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)   # top, left, bottom, right
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    algorithm: str = "direct"     # a target decision: one of CONV_ALGORITHMS
    weight_block: int = 0         # output channels per block of a target weight layout (need
                                  # not divide a group's channels: the last block is padded);
                                  # for "depthwise" and "narrow", output columns per vector
    padded_width: int = 0         # "direct" with a weight block, or an AVX-VNNI "vnni" int8
                                  # conv: the output width computed, in whole register tiles
                                  # (the epilogue writes the real columns); 0: the real width
    output_tile: int = 0          # "winograd": the output tile side m of F(m x m, 3x3)

    def __post_init__(self):
        conv_attributes(self)
        expect(isinstance(self.algorithm, str) and self.algorithm in CONV_ALGORITHMS,
               f"expected algorithm one of {', '.join(CONV_ALGORITHMS)}, found {self.algorithm!r}")
        object.__setattr__(self, "weight_block", integer(self.weight_block, "weight_block"))
        object.__setattr__(self, "padded_width", integer(self.padded_width, "padded_width"))
        expect(self.padded_width >= 0, f"expected a non-negative padded_width, found "
               f"{self.padded_width}")
        expect(self.weight_block >= 0 and (self.algorithm not in BLOCKED_ALGORITHMS
                                           or self.weight_block),
               f"expected a positive weight_block for {self.algorithm}, found "
               f"{self.weight_block}")
        object.__setattr__(self, "output_tile", integer(self.output_tile, "output_tile"))
        tiles = {"winograd": (2, 4), "winograd_dpbf16": (2,)}.get(self.algorithm, (0,))
        expect(self.output_tile in tiles,
               f"expected output_tile 2 or 4 for winograd, 2 for winograd_dpbf16 and 0 "
               f"otherwise, found {self.output_tile} for {self.algorithm}")

    def infer(self, x, w, b=None):
        expect_rank(x, 4, "input x"), expect_rank(w, 4, "weight")
        expect_float(x), expect_same_dtype(x, w, *([b] if b else []))
        expect_nonempty(x, w)
        n, c, h, wd = x.shape
        o, cg, kh, kw = w.shape
        expect(c == cg * self.groups, f"expected input channels {cg * self.groups} "
               f"(weight {w.shape} x groups {self.groups}), found {c} in {x}")
        expect(o % self.groups == 0, f"expected output channels {o} divisible by groups {self.groups}")
        if b is not None:
            expect(b.shape == (o,), f"expected bias of shape ({o},), found {b}")
        pt, pl, pb, pr = self.padding
        oh = conv_out_size(h, kh, self.stride[0], pt, pb, self.dilation[0])
        ow = conv_out_size(wd, kw, self.stride[1], pl, pr, self.dilation[1])
        expect(oh > 0 and ow > 0, f"expected a kernel that fits the padded input, found "
               f"kernel {kh}x{kw} (dilation {self.dilation}) on {h}x{wd} padded by {self.padding}")
        return TensorType((n, o, oh, ow), x.dtype)

    def reference(self, x, w, b=None):
        n, c, h, wd = x.shape
        o, cg, kh, kw = w.shape
        g, og = self.groups, o // self.groups
        (sh, sw), (dh, dw) = self.stride, self.dilation
        pt, pl, pb, pr = self.padding
        oh = conv_out_size(h, kh, sh, pt, pb, dh)
        ow = conv_out_size(wd, kw, sw, pl, pr, dw)
        acc = accumulator(x.dtype)
        xp = np.pad(x.astype(acc), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
        xg = xp.reshape(n, g, cg, *xp.shape[2:])
        wg = w.astype(acc).reshape(g, og, cg, kh, kw)
        out = np.zeros((n, g, og, oh * ow), acc)
        # One GEMM per kernel tap (im2col without materialising the column matrix).
        for i in range(kh):
            for j in range(kw):
                patch = xg[:, :, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                           j * dw: j * dw + sw * (ow - 1) + 1: sw].reshape(n, g, cg, oh * ow)
                if cg == 1:   # depthwise-like: a broadcast multiply beats G tiny GEMMs
                    out += wg[None, :, :, 0, i, j, None] * patch
                else:
                    out += wg[:, :, :, i, j] @ patch
        out = out.reshape(n, o, oh, ow)
        if b is not None:
            out += b.astype(acc).reshape(1, o, 1, 1)
        return out.astype(x.dtype)

    def lower_tvm(self, bb, x, w, b=None):
        from .conv_kernel import lower_conv
        return lower_conv(bb, self, x, w, b)

    def target_choice(self) -> str:
        unit = ("column vectors" if self.algorithm in ("depthwise", "narrow", "narrow_dpbf16")
                else "channel weight blocks")
        block = f", {self.weight_block}-{unit}" if self.weight_block else ""
        rows = f", rows padded to {self.padded_width}" if self.padded_width else ""
        tile = f" F({self.output_tile}x{self.output_tile}, 3x3)" if self.output_tile else ""
        return f"{self.algorithm}{tile}{block}{rows}"

    @property
    def computes_integers(self) -> bool:
        """Whether the recorded algorithm is an int8-only kernel (qlinear_conv2d only)."""
        return self.algorithm in INTEGER_CONV_ALGORITHMS

    @property
    def plain(self) -> "Conv2d":
        """The same convolution without target decisions."""
        return Conv2d(self.stride, self.padding, self.dilation, self.groups)

    def macs(self, inputs, outputs):
        o, cg, kh, kw = inputs[1].shape
        return outputs[0].numel * cg * kh * kw


@register
@dataclass(frozen=True)
class ConvTranspose2d(Op):
    """Transposed 2-D convolution: x [N, C, H, W], weight [C, O/groups, KH, KW], bias [O]."""

    name = "conv_transpose2d"
    arity = (2, 3)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    output_padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    # A target decision: computed as this stride-1 convolution (with its weight block) over the
    # input with stride - 1 zeros inserted between pixels, the weight flipped and transposed
    # (`as_convolution`); None: TVM's own transposed convolution.
    as_conv: Conv2d | None = None
    # With `as_conv`: True when it is the sub-pixel convolution (`as_subpixel`) instead.
    subpixel: bool = False
    # With `subpixel`: True when each output phase is its own convolution over exactly the
    # pixels it keeps (`phase_paddings`; `as_conv` is the first phase's), not one over all.
    by_phase: bool = False

    def __post_init__(self):
        conv_attributes(self)
        expect(self.as_conv is None or isinstance(self.as_conv, Conv2d),
               f"expected a Conv2d or None for as_conv, found {self.as_conv!r}")
        object.__setattr__(self, "subpixel", flag(self.subpixel, "subpixel"))
        expect(not self.subpixel or self.as_conv is not None,
               "expected the sub-pixel convolution (as_conv) with subpixel=True")
        object.__setattr__(self, "by_phase", flag(self.by_phase, "by_phase"))
        expect(not self.by_phase or self.subpixel,
               "expected the sub-pixel convolution (subpixel=True) with by_phase=True")
        expect(all(op < max(s, d) for op, s, d in
                   zip(self.output_padding, self.stride, self.dilation)),
               f"expected output_padding smaller than stride or dilation, found {self}")

    def out_hw(self, h, w, kh, kw):
        pt, pl, pb, pr = self.padding
        return tuple(s * (size - 1) + op + d * (k - 1) + 1 - p0 - p1 for size, k, s, d, op, p0, p1
                     in ((h, kh, self.stride[0], self.dilation[0], self.output_padding[0], pt, pb),
                         (w, kw, self.stride[1], self.dilation[1], self.output_padding[1], pl, pr)))

    def infer(self, x, w, b=None):
        expect_rank(x, 4, "input x"), expect_rank(w, 4, "weight")
        expect_float(x), expect_same_dtype(x, w, *([b] if b else []))
        expect_nonempty(x, w)
        n, c, h, wd = x.shape
        cw, og, kh, kw = w.shape
        expect(c == cw, f"expected weight with {c} input channels (dim 0), found {w}")
        expect(c % self.groups == 0, f"expected input channels {c} divisible by groups {self.groups}")
        o = og * self.groups
        if b is not None:
            expect(b.shape == (o,), f"expected bias of shape ({o},), found {b}")
        oh, ow = self.out_hw(h, wd, kh, kw)
        expect(oh > 0 and ow > 0, f"expected a positive output size, found {oh}x{ow}")
        return TensorType((n, o, oh, ow), x.dtype)

    def reference(self, x, w, b=None):
        n, c, h, wd = x.shape
        _, og, kh, kw = w.shape
        g, cg = self.groups, c // self.groups
        (sh, sw), (dh, dw) = self.stride, self.dilation
        pt, pl, pb, pr = self.padding
        full_h = sh * (h - 1) + self.output_padding[0] + dh * (kh - 1) + 1
        full_w = sw * (wd - 1) + self.output_padding[1] + dw * (kw - 1) + 1
        acc = accumulator(x.dtype)
        xg = x.astype(acc).reshape(n, g, cg, h * wd)
        wg = w.astype(acc).reshape(g, cg, og, kh, kw)
        full = np.zeros((n, g, og, full_h, full_w), acc)
        # The adjoint of the convolution: every kernel tap scatters a GEMM into a strided window.
        for i in range(kh):
            for j in range(kw):
                contrib = np.swapaxes(wg[:, :, :, i, j], 1, 2) @ xg
                full[:, :, :, i * dh: i * dh + sh * (h - 1) + 1: sh,
                     j * dw: j * dw + sw * (wd - 1) + 1: sw] += contrib.reshape(n, g, og, h, wd)
        out = full[:, :, :, pt: full_h - pb, pl: full_w - pr].reshape(n, g * og, full_h - pt - pb,
                                                                       full_w - pl - pr)
        if b is not None:
            out = out + b.astype(acc).reshape(1, -1, 1, 1)
        return np.ascontiguousarray(out).astype(x.dtype)

    def as_convolution(self, kernel: tuple[int, int]) -> Conv2d | None:
        """The stride-1 convolution over the zero-inserted input that computes this one (groups
        1): padded by dilation * (kernel - 1) less the crop, plus the output padding at the end;
        None where a crop exceeds that border."""
        if self.groups != 1:
            return None
        (dh, dw), (kh, kw) = self.dilation, kernel
        pt, pl, pb, pr = self.padding
        border = (dh * (kh - 1), dw * (kw - 1))
        pads = (border[0] - pt, border[1] - pl, border[0] - pb + self.output_padding[0],
                border[1] - pr + self.output_padding[1])
        if min(pads) < 0:
            return None
        return Conv2d(padding=pads, dilation=self.dilation)

    def subpixel_stride(self, kernel: tuple[int, int], in_hw: tuple[int, int]) -> tuple[int, int]:
        """The stride the sub-pixel decomposition splits by: the stride, or along an axis of
        one input pixel (DCGAN's first layer, a latent vector to 4x4) the kernel, since every
        tap then lands on its own output pixel whatever the stride: taps of 1, a product."""
        return tuple(max(s, k) if size == 1 else s
                     for s, k, size in zip(self.stride, kernel, in_hw))

    def subpixel_taps(self, kernel: tuple[int, int], in_hw: tuple[int, int]) -> tuple[int, int]:
        """Taps per axis of each output phase's sub-kernel: ceil(kernel / stride)."""
        return tuple(-(-k // s) for k, s in zip(kernel, self.subpixel_stride(kernel, in_hw)))

    def as_subpixel(self, kernel: tuple[int, int], in_hw: tuple[int, int]) -> Conv2d | None:
        """The stride-1 convolution computing every output phase of this one at once (groups
        1, no dilation, a stride above 1): output row s*q + r of the uncropped transposed
        convolution is sum_t x[q - t] w[r + s t], a correlation of x with the sub-kernel of
        taps r, r + s, ... flipped; the stride^2 phases are output channels o * s^2 + phase of
        one convolution over the input (padded by taps - 1 before, to whole phases after),
        rearranged into the plane afterwards (a pixel shuffle) and cropped. No multiply by
        an inserted zero, where the convolution over the stride-inserted input spends
        1 - 1 / stride^2 of its products on them."""
        stride = self.subpixel_stride(kernel, in_hw)
        if self.groups != 1 or self.dilation != (1, 1) or stride == (1, 1):
            return None
        taps = self.subpixel_taps(kernel, in_hw)
        out_hw = self.out_hw(*in_hw, *kernel)
        start = self.padding[:2]
        after = [-(-(o + p) // s) - size for o, p, s, size in zip(out_hw, start, stride, in_hw)]
        return Conv2d(padding=(taps[0] - 1, taps[1] - 1, max(after[0], 0), max(after[1], 0)))

    def phase_paddings(self, kernel: tuple[int, int], in_hw: tuple[int, int]
                       ) -> dict[tuple[int, int], tuple[int, int, int, int]] | None:
        """The padding of each output phase's own stride-1 convolution (its sub-kernel of
        `as_subpixel`) over the input that computes exactly the pixels the crop keeps of it,
        by kept phase (j, i): output pixel (s_h m + j, s_w l + i) is its pixel (m, l). None
        where there is no sub-pixel form, an output side is not a multiple of the stride (the
        phases keep unequal counts) or a phase would need a negative padding. The sub-pixel
        convolution computes every phase over the rows any of them keeps: 1.56x the products
        of the transposed conv on DCGAN's 4x4 -> 8x8 layer."""
        if self.as_subpixel(kernel, in_hw) is None:
            return None
        stride, taps = self.subpixel_stride(kernel, in_hw), self.subpixel_taps(kernel, in_hw)
        sides = []
        for size, out, s, t, start in zip(in_hw, self.out_hw(*in_hw, *kernel), stride, taps,
                                          self.padding[:2]):
            if out % s:
                return None
            # kept phase j is the uncropped rows s q + (start + j) % s from q = (start + j) // s;
            # the sub-pixel convolution's row q reads input rows q - t + 1 .. q
            before = [t - 1 - (start + j) // s for j in range(s)]
            pads = [(b, out // s - size - b + t - 1) for b in before]
            if min(min(p) for p in pads) < 0:
                return None
            sides.append(pads)
        return {(j, i): (rows[0], cols[0], rows[1], cols[1])
                for j, rows in enumerate(sides[0]) for i, cols in enumerate(sides[1])}

    def target_choice(self) -> str:
        if self.as_conv is None:
            return ""
        if self.by_phase:
            return (f"each output phase its own convolution ({self.as_conv.target_choice()}) "
                    f"over the pixels it keeps, then interleaved")
        if self.subpixel:
            return (f"sub-pixel convolution ({self.as_conv.target_choice()}; every output "
                    f"phase as channels), then a pixel shuffle")
        return f"{self.as_conv.target_choice()} convolution over the stride-inserted input"

    def lower_tvm(self, bb, x, w, b=None):
        if self.as_conv is not None:
            return self.lower_as_conv(bb, x, w, b)
        R = relax().op
        padding, output_padding, tail = self.padding, self.output_padding, (0, 0)
        if any(op >= s for op, s in zip(self.output_padding, self.stride)):
            # Relax wants output_padding < stride (PyTorch allows < dilation too). The trailing
            # output_padding rows/columns receive no kernel tap, so crop less at the end, or
            # zero-pad the end where the crop is smaller than the output padding.
            (pt, pl, pb, pr), (oh, ow) = self.padding, self.output_padding
            padding, output_padding = (pt, pl, max(pb - oh, 0), max(pr - ow, 0)), (0, 0)
            tail = (max(oh - pb, 0), max(ow - pr, 0))
        # Half precision accumulates in float32 and rounds once, after the bias.
        dtype = str(x.ty.dtype)
        accumulate = accumulation_dtype(dtype)
        y = R.nn.conv2d_transpose(x, w, strides=self.stride, padding=padding,
                                  output_padding=output_padding, dilation=self.dilation,
                                  groups=self.groups, out_dtype=accumulate)
        if tail != (0, 0):
            y = R.nn.pad(bb.emit(y), [0, 0, 0, 0, 0, tail[0], 0, tail[1]])
        if accumulate == dtype:
            return add_channel_bias(bb, y, b)
        y = add_channel_bias(bb, y, None if b is None else bb.emit(R.astype(b, accumulate)))
        return R.astype(bb.emit(y), dtype)

    def lower_as_conv(self, bb, x, w, b=None):
        """`as_conv` over x with stride - 1 zeros between pixels, the weight [C, O, KH, KW]
        flipped in space and transposed to [O, C, KH, KW]: the same sums (a transposed
        convolution is a convolution's adjoint), on the register-tiled conv kernel."""
        from tvm import relax as rx, topi
        from .conv_kernel import lower_conv
        if self.subpixel:
            return self.lower_subpixel(bb, x, w, b)
        weight = constant_operand(w, "transposed convolution as a convolution")
        flipped = np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        sh, sw = self.stride
        if (sh, sw) != (1, 1):
            x = bb.emit(bb.call_te(topi.nn.dilate, x, (1, 1, sh, sw), primfunc_name_hint="dilate"))
        return lower_conv(bb, self.as_conv, x, relax_constant(flipped), b)

    def lower_subpixel(self, bb, x, w, b=None):
        """`as_conv`, the sub-pixel convolution (`as_subpixel`), with output channel
        o * sh * sw + ry * sw + rx holding phase (ry, rx) of channel o: its weight tap (j, i)
        is w[:, o, ry + sh (th - 1 - j), rx + sw (tw - 1 - i)] (zero past the kernel); then the
        phases are interleaved into the plane and the padding cropped (`by_phase`: each phase
        convolved on its own, `lower_by_phase`)."""
        from tvm import relax as rx
        from .conv_kernel import lower_conv
        R = rx.op
        weight = constant_operand(w, "transposed convolution as a sub-pixel convolution")
        channels, out_c, kh, kw = weight.shape
        _, _, h, wd = (int(d) for d in relax_type(x).shape)
        (sh, sw) = self.subpixel_stride((kh, kw), (h, wd))
        th, tw = self.subpixel_taps((kh, kw), (h, wd))
        padded = np.zeros((channels, out_c, sh * th, sw * tw), weight.dtype)
        padded[:, :, :kh, :kw] = weight
        # tap (j, i) of phase (ry, rx): row ry + sh (th - 1 - j), column rx + sw (tw - 1 - i)
        taps = padded.reshape(channels, out_c, th, sh, tw, sw)[:, :, ::-1, :, ::-1, :]
        phases = np.ascontiguousarray(taps.transpose(1, 3, 5, 0, 2, 4).reshape(
            out_c * sh * sw, channels, th, tw))
        if self.by_phase:
            return self.lower_by_phase(bb, x, phases, b, (kh, kw), (h, wd))
        bias = None
        if b is not None:
            bias = relax_constant(np.repeat(constant_operand(b, "transposed convolution's bias"),
                                            sh * sw), str(weight.dtype))
        y = bb.emit(lower_conv(bb, self.as_conv, x, relax_constant(phases), bias))
        n, _, rows, cols = (int(d) for d in relax_type(y).shape)
        y = bb.emit(R.reshape(y, (n, out_c, sh, sw, rows, cols)))
        y = bb.emit(R.permute_dims(y, [0, 1, 4, 2, 5, 3]))
        y = bb.emit(R.reshape(y, (n, out_c, rows * sh, cols * sw)))
        out_h, out_w = self.out_hw(h, wd, kh, kw)
        top, left = self.padding[:2]
        return R.strided_slice(y, [2, 3], [top, left], [top + out_h, left + out_w])

    def lower_by_phase(self, bb, x, phases: np.ndarray, b, kernel, in_hw):
        """Each kept phase (j, i) as `as_conv` with that phase's padding (`phase_paddings`) and
        its rows of `phases` (`lower_subpixel`'s weight), then interleaved: channel
        (j * sw + i) * O + o of their concatenation is output pixel (sh m + j, sw l + i)."""
        from tvm import relax as rx
        from .conv_kernel import lower_conv
        R = rx.op
        (sh, sw), (th, tw) = self.subpixel_stride(kernel, in_hw), self.subpixel_taps(kernel, in_hw)
        channels = phases.shape[1]
        by_phase = phases.reshape(-1, sh, sw, channels, th, tw)
        out_c = by_phase.shape[0]
        top, left = self.padding[:2]
        parts = []
        for (j, i), padding in sorted(self.phase_paddings(kernel, in_hw).items()):
            weight = np.ascontiguousarray(by_phase[:, (top + j) % sh, (left + i) % sw])
            conv = replace(self.as_conv, padding=padding)
            parts.append(bb.emit(lower_conv(bb, conv, x, relax_constant(weight), b)))
        n, _, rows, cols = (int(d) for d in relax_type(parts[0]).shape)
        y = bb.emit(R.concat(parts, axis=1))
        y = bb.emit(R.reshape(y, (n, sh, sw, out_c, rows, cols)))
        y = bb.emit(R.permute_dims(y, [0, 3, 4, 1, 5, 2]))
        return R.reshape(y, (n, out_c, rows * sh, cols * sw))

    def macs(self, inputs, outputs):
        c, og, kh, kw = inputs[1].shape
        return inputs[0].numel * og * kh * kw


@register
@dataclass(frozen=True)
class BatchNorm(Op):
    """Inference batch normalization over channels (axis 1): inputs x, scale, bias, mean, var."""

    name = "batch_norm"
    arity = (5, 5)
    buffer_inputs = (3, 4)   # running mean and variance are statistics, not parameters
    epsilon: float = 1e-5

    def __post_init__(self):
        object.__setattr__(self, "epsilon", real(self.epsilon, "epsilon"))
        expect(self.epsilon >= 0, f"expected a non-negative epsilon, found {self.epsilon}")

    def infer(self, x, scale, bias, mean, var):
        expect(x.ndim >= 2, f"expected input of rank >= 2, found {x}")
        expect_float(x), expect_same_dtype(x, scale, bias, mean, var)
        c = x.shape[1]
        for what, t in (("scale", scale), ("bias", bias), ("mean", mean), ("var", var)):
            expect(t.shape == (c,), f"expected {what} of shape ({c},), found {t}")
        return x

    def reference(self, x, scale, bias, mean, var):
        shape = (1, -1) + (1,) * (x.ndim - 2)
        acc = accumulator(x.dtype)
        inv = (scale.astype(acc) / np.sqrt(var.astype(acc) + acc(self.epsilon))).reshape(shape)
        y = (x.astype(acc) - mean.astype(acc).reshape(shape)) * inv + bias.astype(acc).reshape(shape)
        return y.astype(x.dtype)

    def lower_tvm(self, bb, x, scale, bias, mean, var):
        import tvm
        rx = relax()
        params = (scale, bias, mean, var)
        if all(isinstance(p, tvm.ir.Constant) for p in params):
            # Constant statistics: x * s + t, with s and t computed here (float64, then the
            # input's dtype; float32 for half precision) instead of by a kernel at every run.
            scale_, bias_, mean_, var_ = (p.value.numpy().astype(np.float64) for p in params)
            s = scale_ / np.sqrt(var_ + self.epsilon)
            shape = (1, -1) + (1,) * (len(x.ty.shape) - 2)

            def affine(x):
                dtype = str(x.ty.dtype)
                const = lambda a: relax_constant(a.reshape(shape), dtype)
                return rx.op.add(bb.emit(rx.op.multiply(x, const(s))), const(bias_ - mean_ * s))
            return lower_in_float32(bb, x, affine)
        # training=False: Relax's default normalizes with batch statistics.
        bn = bb.emit(rx.op.nn.batch_norm(x, scale, bias, mean, var, axis=1, epsilon=self.epsilon,
                                         training=False))
        return rx.TupleGetItem(bn, 0)
