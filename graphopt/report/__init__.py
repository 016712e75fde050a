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
from typing import Callable, Mapping

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
    from . import charts, memory
    from .extras import dot_executable
    from .graph_svg import Changes, fold_depth_for, graph_svg
    dot_executable()
    say = progress or (lambda step: None)
    verify(graph)
    feeds = dict(inputs) if inputs is not None else probe_inputs(graph, seed)
    stages, result = _run_steps(graph, passes, quantize, prune, calibration, say)
    optimized = result.graph

    say("comparing layer by layer")
    from ..compare import compare
    comparison = compare(graph, optimized, feeds, per_layer=True)

    say("drawing the graphs")
    changes = Changes.of(graph, optimized)
    depth = fold_depth_for(max(graph, optimized, key=lambda g: len(g.nodes)), max_nodes)
    pictures = {"before": graph_svg(graph, changes.before, max_nodes, depth),
                "after": graph_svg(optimized, changes.after, max_nodes, depth)}
    costs = charts.layer_costs(graph, optimized)
    plots = {"costs": charts.cost_chart(costs), "errors": charts.error_chart(comparison)}
    timing = _profile(optimized, feeds, threads, onnxruntime, say) if profile else \
        Timing(skipped="no profile asked for")
    plots.update(timing.plots)

    sections = {
        "graph": graph.name,
        "steps": [title for title, _ in stages],
        "optimize": result.to_dict(),
        "totals": {"before": _totals(graph), "after": _totals(optimized)},
        "layers": [{"layer": c.layer, "macs": list(c.macs), "params": list(c.params)}
                   for c in costs],
        "compare": comparison.to_dict(),
        "kernels": [k.to_dict() for k in timing.kernels],
        "compiled_ms": timing.compiled_ms,
        "onnxruntime": [t.to_dict() for t in timing.onnxruntime],
        "onnxruntime_skipped": timing.skipped,
        "memory": {"before": memory.memory_summary(graph),
                   "after": memory.memory_summary(optimized)}}
    say("writing the page")
    from .html import render
    page = render(graph=graph, stages=stages, sections=sections, pictures=pictures, plots=plots,
                  comparison=comparison, kernels=timing.kernels, top_kernels=timing.top(),
                  ort=timing.onnxruntime[:TOP_KERNELS], model=timing.model,
                  host=platform.processor() or platform.machine())
    built = Report(page, sections)
    if output is not None:
        built.save(output)
    return built


def _run_steps(graph: Graph, passes, quantize, prune, calibration, say):
    """Prune (if asked), then quantize or run the passes: ([(step, its text table)], the last
    step's OptimizeResult)."""
    stages, current = [], graph
    if prune is not None:
        say(f"pruning {prune:g} of the channels")
        from ..compression import prune as prune_channels
        pruned = prune_channels(current, prune)
        stages.append(("prune", pruned.report))
        current = pruned.graph
    if quantize is not None:
        say(f"quantizing to {quantize}")
        from ..quantization import Calibration, calibrate, quantize as quantize_graph
        if quantize == "int8":
            calib = calibration if isinstance(calibration, Calibration) else \
                calibrate(current, [calibration] if isinstance(calibration, Mapping)
                          else calibration)
            result = quantize_graph(current, calib)
        else:
            result = quantize_graph(current, dtype=quantize)
    else:
        say("running the passes")
        from ..passes import optimize
        result = optimize(current, passes, check=True)
    stages.append(("quantize" if quantize else "optimize", result.report))
    return stages, result


@dataclass
class Timing:
    """The compiled model, its kernel calls and latency, and ONNX Runtime's node profile (or
    why it is missing), with their charts."""

    model: object = None
    kernels: list = field(default_factory=list)
    compiled_ms: float | None = None
    onnxruntime: list = field(default_factory=list)
    skipped: str | None = None
    plots: dict = field(default_factory=dict)

    def top(self) -> list:
        return sorted(self.kernels, key=lambda k: -k.ms)[:TOP_KERNELS]


def _profile(graph: Graph, feeds, threads, onnxruntime: bool, say) -> Timing:
    from ..targets.tvm import compile_graph
    from ..timing import median_ms
    from . import charts, profile
    say("compiling for this CPU")
    model = compile_graph(graph, "cpu", passes=(), threads=threads)    # target passes only
    say("timing each kernel")
    timing = Timing(model, profile.kernel_times(model, feeds))
    timing.compiled_ms = median_ms(lambda: model.run(feeds), 20)
    top = timing.top()
    timing.plots["kernels"] = charts.kernel_chart([k.node or k.kernel for k in top],
                                                  [k.ms for k in top], "compiled kernels")
    if not onnxruntime:
        timing.skipped = "not asked for"
        return timing
    say("profiling ONNX Runtime")
    try:
        timing.onnxruntime = profile.onnxruntime_times(graph, feeds, threads=model.threads)
    except (ImportError, GraphoptError) as e:
        timing.skipped = str(e)
        return timing
    shown = timing.onnxruntime[:TOP_KERNELS]
    timing.plots["onnxruntime"] = charts.kernel_chart([t.node for t in shown],
                                                      [t.ms for t in shown],
                                                      "ONNX Runtime nodes")
    return timing


def _totals(graph: Graph) -> dict:
    from ..analysis import summary_dict
    return summary_dict(graph)["totals"]
