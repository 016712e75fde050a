"""Compression: passes that make a model smaller and cheaper and say what each layer lost.

    f = go.factorize(g, energy=0.9)                      # 1x1 bottlenecks (low-rank convs)
    p = go.prune(g, ratio=0.4, criterion="l1")           # structured channel pruning
    t = go.finetune(p.graph, data=(x, y), teacher=g)     # recover accuracy (torch autograd)
"""
from __future__ import annotations

from .channels import ChannelGroups, channel_groups
from .factorize import factorize
from .finetune import accuracy, finetune
from .prune import prune
from .result import CompressionResult, LayerChange

__all__ = ["ChannelGroups", "CompressionResult", "LayerChange", "accuracy", "channel_groups",
           "factorize", "finetune", "prune"]
