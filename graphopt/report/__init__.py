"""`report`: what graphopt did to a model, as one self-contained HTML page (`Report.html`) and
its numbers (`Report.to_dict()`, the stable JSON of docs/json.md).

    rep = go.report(go.zoo.resnet18(), "resnet18.html")       # default pipeline
    rep = go.report(g, quantize="float16", prune=0.3)          # prune, then convert

The page holds the graph before and after (Graphviz SVG), the pass table, MACs and params per
layer, the error per layer against the float64 reference, the compiled CPU model's time per
kernel beside ONNX Runtime's per node, and memory per precision. Needs the `report` extra
(matplotlib, graphviz-pure, jinja2); see docs/report.md."""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import numpy as np

from ..errors import GraphoptError, OptionError
from ..ir import Graph
from ..signature import probe_inputs
from ..verify import verify
from .extras import MissingExtraError, require

__all__ = ["MissingExtraError", "Report", "report"]

TOP_KERNELS = 15      # kernels (and ONNX Runtime nodes) listed and charted


@dataclass
class Report:
    """A built report: `html` (the page), `sections` (name -> its numbers), `svgs` (how many
    pictures the page holds), `save(path)`."""

    html: str
    sections: dict = field(default_factory=dict)
    path: str | None = None

    @property
    def svgs(self) -> int:
        return self.html.count("<svg")

    def to_dict(self) -> dict:
        """The stable JSON form (docs/json.md, "html report")."""
        return {"output": self.path, **self.sections}

    def save(self, path: str) -> str:
        from ..files import atomic_open
        with atomic_open(path, "w") as f:
            f.write(self.html)
        self.path = path
        return path


def report(graph: Graph, output: str | None = None, *, passes=None, quantize: str | None = None,
           prune: float | None = None, calibration=None, inputs: Mapping | None = None,
           seed: int = 0, profile: bool = True, onnxruntime: bool = True,
           threads: int | None = None, max_nodes: int = 120,
           progress: Callable[[str], object] | None = None) -> Report:
    """Optimize `graph` and report what changed as one HTML page (written to `output` when
    given). `prune`: structured pruning ratio applied first (`go.prune`); `quantize`: "float16",
    "bfloat16" or "int8" (int8 needs `calibration`: a Calibration of the graph, or batches to
    calibrate on) replaces the pass pipeline with `go.quantize`'s; otherwise `passes` (names,
    None: the default pipeline) run with check=True. `inputs` (default: a seeded probe input)
    feed the per-layer comparison and the profiles; `profile=False` skips compiling, and
    `onnxruntime=False` ONNX Runtime's profile. `progress(step)` hears each step begin."""
    if not isinstance(graph, Graph):
        raise OptionError(f"expected a graphopt Graph, found {type(graph).__name__}")
    if quantize is not None and quantize not in ("float16", "bfloat16", "int8"):
        raise OptionError(f"expected quantize to be float16, bfloat16 or int8, found {quantize!r}")
    if quantize == "int8" and calibration is None:
        raise OptionError("quantize='int8' needs calibration: a Calibration of the graph, or "
                          "sample batches ({input name: array}) to calibrate on")
    if quantize is not None and passes is not None:
        raise OptionError("give passes or quantize, not both: quantize runs the default "
                          "pipeline, then converts")
    if prune is not None and (isinstance(prune, bool) or not isinstance(prune, (int, float))
                              or not 0 < prune < 1):
        raise OptionError(f"expected prune to be a ratio in (0, 1), found {prune!r}")
    # the optional packages first: a missing one fails before any work
    require("jinja2", "report", "the HTML report")
    require("matplotlib", "report", "the report's charts")
    from . import charts, memory, profile as profiling
    from .extras import dot_executable
    from .graph_svg import Changes, fold_depth_for, graph_svg
    dot_executable()
    say = progress or (lambda step: None)
    verify(graph)
    feeds = dict(inputs) if inputs is not None else probe_inputs(graph, seed)

    stages = []          # (title, text table) per step that changed the graph
    current = graph
    if prune is not None:
        say(f"pruning {prune:g} of the channels")
        from ..compression import prune as prune_channels
        pruned = prune_channels(current, prune)
        stages.append(("prune", pruned.report))
        current = pruned.graph
    if quantize is not None:
        say(f"quantizing to {quantize}")
        from ..quantization import calibrate, quantize as quantize_graph
        if quantize == "int8":
            calib = calibration if hasattr(calibration, "params") else \
                calibrate(current, _batches(calibration))
            result = quantize_graph(current, calib)
        else:
            result = quantize_graph(current, dtype=quantize)
    else:
        say("running the passes")
        from ..passes import optimize
        result = optimize(current, passes, check=True)
    stages.append(("quantize" if quantize else "optimize", result.report))
    optimized = result.graph

    say("comparing layer by layer")
    from ..compare import compare
    comparison = compare(graph, optimized, feeds, per_layer=True)

    say("drawing the graphs")
    changes = Changes.of(graph, optimized)
    depth = fold_depth_for(graph if len(graph.nodes) >= len(optimized.nodes) else optimized,
                           max_nodes)
    pictures = {"before": graph_svg(graph, changes.before, max_nodes, depth),
                "after": graph_svg(optimized, changes.after, max_nodes, depth)}
    costs = charts.layer_costs(graph, optimized)
    plots = {"costs": charts.cost_chart(costs), "errors": charts.error_chart(comparison)}

    kernels, ort, ort_skipped, compiled_ms, model = [], [], None, None, None
    if profile:
        say("compiling for this CPU")
        from ..targets.tvm import compile_graph
        from ..timing import median_ms
        model = compile_graph(optimized, "cpu", passes=(), threads=threads)
        say("timing each kernel")
        kernels = profiling.kernel_times(model, feeds)
        compiled_ms = median_ms(lambda: model.run(feeds), 20)
        top = sorted(kernels, key=lambda k: -k.ms)[:TOP_KERNELS]
        plots["kernels"] = charts.kernel_chart([k.node or k.kernel for k in top],
                                               [k.ms for k in top], "compiled kernels")
        if onnxruntime:
            say("profiling ONNX Runtime")
            try:
                ort = profiling.onnxruntime_times(optimized, feeds, threads=model.threads)
            except (ImportError, GraphoptError) as e:
                ort_skipped = str(e)
            if ort:
                plots["onnxruntime"] = charts.kernel_chart(
                    [t.node for t in ort[:TOP_KERNELS]], [t.ms for t in ort[:TOP_KERNELS]],
                    "ONNX Runtime nodes")
        else:
            ort_skipped = "not asked for"
    else:
        ort_skipped = "no profile asked for"

    memories = {"before": memory.memory_summary(graph), "after": memory.memory_summary(optimized)}
    sections = {
        "graph": graph.name,
        "steps": [title for title, _ in stages],
        "optimize": result.to_dict(),
        "totals": {"before": _totals(graph), "after": _totals(optimized)},
        "layers": [{"layer": c.layer, "macs": list(c.macs), "params": list(c.params)}
                   for c in costs],
        "compare": comparison.to_dict(),
        "kernels": [k.to_dict() for k in kernels],
        "compiled_ms": compiled_ms,
        "onnxruntime": [t.to_dict() for t in ort],
        "onnxruntime_skipped": ort_skipped,
        "memory": memories}
    say("writing the page")
    from .html import render
    page = render(graph=graph, stages=stages, sections=sections, pictures=pictures, plots=plots,
                  comparison=comparison, kernels=kernels,
                  top_kernels=sorted(kernels, key=lambda k: -k.ms)[:TOP_KERNELS],
                  ort=ort[:TOP_KERNELS], model=model,
                  host=platform.processor() or platform.machine())
    built = Report(page, sections)
    if output is not None:
        built.save(output)
    return built


def _totals(graph: Graph) -> dict:
    from ..analysis import summary_dict
    return summary_dict(graph)["totals"]


def _batches(calibration) -> Iterable[Mapping[str, np.ndarray]]:
    if isinstance(calibration, Mapping):
        return [calibration]
    return calibration
