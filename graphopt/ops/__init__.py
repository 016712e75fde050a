"""The op registry. Each family module defines its ops once (attributes, shape/dtype rule, numpy
reference kernel, TVM lowering) and registers them; importing this package loads them all."""
from . import (activation, binary, cast, conv, epilogue, fused, linear, math, pool,  # noqa: F401
               quant, reduce, resize, shape)
from .activation import (Celu, Clip, Dropout, Elu, Gelu, HardSigmoid, HardSwish, Identity,
                         LeakyRelu, LogSoftmax, Mish, Relu, Selu, Sigmoid, Softmax, Softplus,
                         Softsign, Tanh, ThresholdedRelu)
from .base import OPS, Op, get_op, register
from .binary import (Add, Compare, Div, Logical, Maximum, Minimum, Mul, Not, Pow, PRelu, Sub,
                     Where)
from .cast import Cast
from .conv import BatchNorm, Conv2d, ConvTranspose2d
from .fused import FusedConv2d
from .linear import Linear, Matmul
from .math import Abs, Ceil, Erf, Exp, Floor, Log, Neg, Reciprocal, Round, Sign, Sqrt
from .pool import (AvgPool2d, GlobalAvgPool2d, GlobalMaxPool2d, Lrn, MaxPool2d,
                   MaxPool2dIndices, MaxUnpool2d)
from .quant import (Conv2dInteger, DequantizeLinear, MatmulInteger, QLinearConv2d, QLinearMatmul,
                    QuantizeLinear, TableLookup)
from .reduce import (InstanceNorm, LayerNorm, ReduceL1, ReduceL2, ReduceLogSumExp, ReduceMax,
                     ReduceMean, ReduceMin, ReduceProd, ReduceSum, ReduceSumSquare)
from .arg_reduce import ArgMax, ArgMin
from .recurrent import Gru, Lstm
from .resize import Resize
from .scan import CumSum
from .shape import Concat, Expand, Flatten, Gather, Pad, Reshape, Slice, Tile, Transpose

__all__ = ["OPS", "Op", "get_op", "register", "Add", "AvgPool2d", "BatchNorm", "Cast", "Clip", "Concat",
           "Conv2d", "ConvTranspose2d", "Div", "Dropout", "Flatten", "FusedConv2d", "GlobalAvgPool2d",
           "GlobalMaxPool2d", "Identity", "LeakyRelu", "Linear", "Lrn", "Matmul", "MaxPool2d", "Mul", "Pad",
           "Relu", "Reshape", "Resize", "Sigmoid", "Softmax", "Sub", "Tanh", "Transpose",
           "Conv2dInteger", "DequantizeLinear", "MatmulInteger", "QLinearConv2d", "QLinearMatmul",
           "QuantizeLinear", "Erf", "Exp", "Expand", "Gather", "Gelu", "HardSigmoid", "HardSwish",
           "LayerNorm", "Log", "Pow", "ReduceMax", "ReduceMean", "ReduceSum", "Slice", "Sqrt",
           "Tile", "Where", "Compare", "InstanceNorm", "ArgMax", "ArgMin", "Gru", "Lstm",
           "TableLookup", "Abs", "Elu", "Maximum", "Minimum", "Mish", "Neg", "Reciprocal", "Selu",
           "Softplus", "Softsign", "ThresholdedRelu", "PRelu", "Celu", "LogSoftmax", "Logical",
           "Not", "Sign", "Floor", "Ceil", "Round", "CumSum"]
