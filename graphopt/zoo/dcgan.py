"""The DCGAN generator (Radford et al. 2015) as in PyTorch's DCGAN example: a latent vector
[N, nz, 1, 1] goes through five 4x4 transposed convolutions (1 -> 4 -> 8 -> 16 -> 32 -> 64),
each but the last followed by batch norm and ReLU, and a tanh. Names follow the example's
`main` Sequential (`main.0`, `main.1`, ...). nz=100, ngf=64, nc=3: 3,576,704 parameters."""
from __future__ import annotations

from ..frontends import dsl
from ..ir import Graph


def dcgan_generator(batch: int = 1, seed: int = 0, nz: int = 100, ngf: int = 64,
                    nc: int = 3) -> Graph:
    with dsl.Builder("dcgan_generator", seed) as b:
        x = b.input("input", (batch, nz, 1, 1))
        with b.scope("main"):
            index = 0
            for multiple in (8, 4, 2, 1):
                stride, padding = (1, 0) if index == 0 else (2, 1)
                x = dsl.conv_transpose2d(x, ngf * multiple, 4, stride=stride, padding=padding,
                                         bias=False, name=str(index))
                x = dsl.relu(dsl.batch_norm(x, name=str(index + 1)), name=str(index + 2))
                index += 3
            x = dsl.conv_transpose2d(x, nc, 4, stride=2, padding=1, bias=False, name=str(index))
            x = dsl.tanh(x, name=str(index + 1))
        return b.output(x)
