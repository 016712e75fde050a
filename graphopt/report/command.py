"""`graphopt report` and `graphopt view` (registered in graphopt/cli.py, which declares their
arguments): the command-line side of `report` and `view`."""
from __future__ import annotations

from .. import cli


def run_report(args) -> int:
    """Build the report of the model and write it to --output; print where (or --json)."""
    from . import report
    output = cli.output_path(args.output, ".html")
    if args.quantize == "int8" and not args.calib:
        raise cli.InputError("--quantize int8 needs --calib FILE.npz: sample inputs to "
                             "calibrate activation ranges on")
    graph = cli.model_from(args)
    feeds = cli.load_inputs(args.inputs, cli.signature_of(graph), args.seed)
    calibration = cli.sample_batches(args.calib, graph) if args.calib else None

    with cli.step(f"building the report of '{graph.name}'") as shown:     # on a terminal, the
        def progress(step: str) -> None:                                   # step it is at
            shown.set_description_str(f"report: {step} ...")

        built = report(graph, output, passes=cli.pass_list(args.passes), quantize=args.quantize,
                       prune=args.prune, calibration=calibration, inputs=feeds, seed=args.seed,
                       profile=not args.no_profile, threads=args.threads, progress=progress)
    if args.json:
        cli.print_json("report", {"model": args.model, **built.to_dict()})
        return cli.EXIT_OK
    sections = built.sections
    first = sections["compare"]["first_divergent"]
    print(f"{output}: {built.svgs} pictures; {sections['totals']['before']['nodes']} -> "
          f"{sections['totals']['after']['nodes']} nodes; first divergent layer: "
          f"{first or 'none'}" + (f"; compiled {sections['compiled_ms']:.3f} ms per run"
                                  if sections["compiled_ms"] is not None else ""))
    return cli.EXIT_OK


def run_view(args) -> int:
    """Write the model (after passes with --optimized) for Netron and serve it until Ctrl-C."""
    import os
    import tempfile
    from ..files import safe_file_name
    from .extras import require
    from .view import save_view, serve
    netron = require("netron", "view", "graphopt view")
    if args.output:
        cli.output_path(args.output, ".onnx")
    graph = cli.model_from(args)
    passes = None if args.optimized in (None, "default") else cli.pass_list(args.optimized)
    if args.target is not None:
        from ..targets.tvm.compile import optimize_for_target
        from ..targets.tvm.options import CompileOptions
        graph = optimize_for_target(graph, args.target, CompileOptions(passes=passes))[0].graph
    elif args.optimized is not None:
        from ..passes import optimize
        graph = optimize(graph, passes).graph
    with tempfile.TemporaryDirectory(prefix="graphopt-view-") as folder:
        path = args.output or os.path.join(folder, f"{safe_file_name(graph.name)}.onnx")
        save_view(graph, path, decided=args.target is not None)
        host, port = serve(path, args.host, args.port, browse=not args.no_browser)
        print(f"{path} in Netron at http://{host}:{port} (Ctrl-C stops)", flush=True)
        netron.wait()
    return cli.EXIT_OK
