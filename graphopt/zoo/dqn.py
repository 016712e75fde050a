"""The DQN Atari Q-network (Mnih et al. 2015, "Human-level control through deep reinforcement
learning", Methods: model architecture): four stacked 84x84 frames, convolutions of 32 8x8
filters at stride 4, 64 4x4 at stride 2 and 64 3x3 at stride 1, a 512-unit hidden layer, and one
Q-value per action, ReLU after every layer but the last. Module names follow CleanRL's
`QNetwork.network` Sequential (`network.0`, ..., `network.9`); the input is the frames already
scaled to [0, 1] (CleanRL divides by 255 in its forward). With the full Atari action set (18):
1,693,362 parameters, summed by hand from the layer list."""
from __future__ import annotations

from ..frontends import dsl
from ..ir import Graph

FRAMES = 4
ATARI_ACTIONS = 18


def dqn(batch: int = 1, seed: int = 0, num_actions: int = ATARI_ACTIONS,
        image_size: int = 84) -> Graph:
    with dsl.Builder("dqn", seed) as b:
        x = b.input("input", (batch, FRAMES, image_size, image_size))
        with b.scope("network"):
            x = dsl.relu(dsl.conv2d(x, 32, 8, stride=4, name="0"), name="1")
            x = dsl.relu(dsl.conv2d(x, 64, 4, stride=2, name="2"), name="3")
            x = dsl.relu(dsl.conv2d(x, 64, 3, stride=1, name="4"), name="5")
            x = dsl.relu(dsl.linear(dsl.flatten(x, name="6"), 512, name="7"), name="8")
            return b.output(dsl.linear(x, num_actions, name="9"))
