"""The `graphopt` command line: one subcommand per job, each a function registered with
`@command`. To add one, write

    @command("name", "one line for the command list", MODEL, arg("--flag", help="..."))
    def name(args) -> int:
        ...                       # return an EXIT_* code; raise GraphoptError for bad input

Shared pieces: `load_model(spec)` (zoo name or .onnx file), `load_inputs(...)`, `step(...)`
(progress of a long step on stderr). Errors print as one line (`--debug` shows the traceback).
A reader that stops early (`graphopt show resnet50 | head`) ends the command quietly with exit
141, as the shell reports other tools that SIGPIPE ended (`set -o pipefail` sees it).
"""
from __future__ import annotations

import argparse
import math
import os
import select
import signal
import sys
import threading
import time
import traceback
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from . import __version__, progress
from .errors import GraphoptError, InputError, LoweringError, PassError, WriteError
from .files import atomic_open, safe_file_name
from .signature import Signature, probe_inputs
from .table import format_table
from .targets.tvm.options import KERNELS as COMPILE_KERNELS
from .timing import median_ms

EXIT_OK = 0          # the command did what was asked (and a comparison matched)
EXIT_MISMATCH = 1    # a comparison ran and found outputs out of tolerance
EXIT_USAGE = 2       # bad arguments, unknown model, unreadable or invalid file or input
EXIT_FAILED = 3      # a valid request failed: compilation, an optimization pass, the runtime,
                     # writing the output (disk full)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as a shell reports a process it ended)
EXIT_CLOSED_OUTPUT = 141  # the reader of stdout or stderr went away (128 + SIGPIPE)

EPILOG = f"""exit codes: {EXIT_OK} ok, {EXIT_MISMATCH} comparison found a mismatch, {EXIT_USAGE} bad
arguments/model/file/input, {EXIT_FAILED} compilation or run failed, {EXIT_INTERRUPTED} interrupted,
{EXIT_CLOSED_OUTPUT} the output's reader stopped early (`| head`). Add --debug before the command
for full tracebacks."""


# ---- registry ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    name: str
    help: str
    arguments: tuple
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def arg(*flags: str, **options) -> tuple:
    """An argparse argument, declared once and shared by the commands that take it."""
    return flags, options


def command(name: str, help: str, *arguments: tuple):
    """Register the decorated `run(args) -> exit code` as subcommand `name`; its docstring is the
    command's `--help` description."""
    def register(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = Command(name, help, arguments, run)
        return run
    return register


def integer(minimum: int) -> Callable[[str], int]:
    """An argparse type: an int of at least `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, found {text!r}")
        return value
    return parse


def tolerance(text: str) -> float:
    """An argparse type: a finite float >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, found {text!r}")
    return value


def existing_file(text: str) -> str:
    """An argparse type: the path of a file that exists."""
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return text


def input_file(text: str) -> str:
    """An argparse type: [NAME=]FILE with FILE an existing file."""
    existing_file(text.rpartition("=")[2])
    return text


def tuning_source(text: str) -> str:
    """An argparse type: 'user' or a folder that exists."""
    if text != "user" and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"no such folder: {text} (expected a folder of tuning "
                                         "records or 'user')")
    return text


def input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """An argparse type: NAME=D0,D1,... (each dimension an integer >= 1)."""
    name, equals, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not equals or not name or not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME=D0,D1,... such as input=1,3,224,224 "
                                         f"(dimensions >= 1), found {text!r}")
    return name, shape


MODEL = arg("model", help="a zoo model name (e.g. resnet18; see `graphopt list`) or an .onnx file")
BATCH = arg("--batch", type=integer(1), help="batch size: of a zoo model (default 1), or the "
            "first dimension of each input of an .onnx file (default: as the file declares it)")
INPUT_SHAPE = arg("--input-shape", dest="input_shapes", type=input_shape, action="append",
                  default=[], metavar="NAME=D0,D1,...",
                  help="the shape of an .onnx file's input, for files with dynamic (symbolic) "
                       "dimensions, e.g. input=1,3,224,224; repeatable")
SEED = arg("--seed", type=integer(0), default=0,
           help="seed for zoo weights and random inputs (default 0)")
TARGET = arg("--target", default="cpu",
             help="cpu, cuda (= cuda:sm_90) or cuda:sm_<NN> such as cuda:sm_80 (default cpu)")
KERNELS = arg("--kernels", choices=COMPILE_KERNELS, default="tvm",
              help="who computes CPU convolutions: graphopt's TVM schedules (default) or oneDNN")
PASSES = arg("--passes", help="graphopt graph passes run before lowering, comma-separated "
             "(default: the default pipeline; 'none': no graph pass). The target's own passes "
             "(conv algorithm, weight layout) run after them")
THREADS = arg("--threads", type=integer(1), help="threads the compiled model runs on (default: "
              "every core this process may use)")
BUILD_THREADS = arg("--build-threads", type=integer(1), help="threads that build a CPU model's "
                    "kernels (default: every core this process may use)")
TUNING = arg("--tuning", metavar="DIR|user", type=tuning_source, help="apply MetaSchedule "
             "records from `graphopt tune` kept in DIR ('user': the user's cache folder); "
             "default: none")
JSON = arg("--json", action="store_true",
           help="print one JSON object instead of the tables (keys: docs/json.md)")
INPUTS = arg("--input", dest="inputs", action="append", default=[], metavar="[NAME=]FILE",
             type=input_file,
             help="an input as .npy (NAME= for models with several inputs) or all inputs as one "
                  ".npz; repeatable. Default: random normal inputs from --seed")


# ---- shared helpers ---------------------------------------------------------------------------

def print_json(command: str, body: dict) -> None:
    """The machine-readable form of a command's result: `graphopt` (version) and `command`,
    then the command's own keys (docs/json.md), on stdout."""
    import json
    print(json.dumps({"graphopt": __version__, "command": command, **body}, indent=2,
                     allow_nan=True))


def load_model(spec: str, batch: int | None = None, seed: int = 0,
               input_shapes: Sequence[tuple[str, tuple[int, ...]]] = ()):
    """A Graph from a zoo model name or a path to an .onnx file. `batch` is a zoo model's batch
    size (default 1), or the first dimension of each input of an .onnx file; `input_shapes`
    ((name, shape) pairs, --input-shape) fix an .onnx file's inputs, dynamic ones included."""
    if spec.endswith(".onnx") or os.path.sep in spec:
        if not os.path.isfile(spec):
            raise InputError(f"no such file: {spec}")
        if not spec.endswith(".onnx"):
            raise InputError(f"{spec}: expected an .onnx file or a zoo model name")
        from .frontends.onnx import load_onnx
        return load_onnx(spec, input_shapes=onnx_input_shapes(spec, batch, dict(input_shapes)))
    from . import zoo
    if spec not in zoo.MODELS:
        raise InputError(f"unknown model {spec!r}: expected a zoo name ({', '.join(zoo.MODELS)}) "
                         "or an .onnx file")
    if input_shapes:
        raise InputError(f"--input-shape is for .onnx files; the zoo model {spec!r} takes --batch")
    return zoo.MODELS[spec](batch=batch or 1, seed=seed)


def model_from(args):
    """The model the command line names: `load_model` with --batch, --seed and --input-shape."""
    return load_model(args.model, args.batch, args.seed, getattr(args, "input_shapes", ()))


def onnx_input_shapes(path: str, batch: int | None,
                      given: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """`load_onnx`'s input_shapes for the file's inputs: those given; with `batch`, each other
    input as declared with its first dimension `batch`. An input left with dynamic dimensions
    is an InputError naming the option that fixes it."""
    import onnx
    from .frontends.onnx_import import declared_dim
    try:   # only the inputs are read here; load_onnx reads (and checks) the whole file
        graph = onnx.load(path, load_external_data=False).graph
    except Exception:   # a malformed file: load_onnx says what is wrong with it
        return given
    shapes = dict(given)
    initializers = {i.name for i in graph.initializer}
    inputs = [v.name for v in graph.input if v.name not in initializers]
    for name in given:
        if name not in inputs:
            raise InputError(f"{path}: --input-shape {name}=...: no graph input named '{name}'; "
                             f"inputs are {inputs}")
    for v in graph.input:
        if v.name in shapes or v.name in initializers or not v.type.HasField("tensor_type") \
                or not v.type.tensor_type.HasField("shape"):
            continue
        dims = [declared_dim(d) for d in v.type.tensor_type.shape.dim]
        if batch is not None and dims:
            dims[0] = batch
        symbolic = [d for d in dims if isinstance(d, str)]
        if symbolic:
            example = ",".join(str(d) if isinstance(d, int) else "N" for d in dims)
            batch_hint = " (or --batch N)" if [d for d in dims[1:] if isinstance(d, str)] == [] \
                else ""
            raise InputError(f"{path}: input '{v.name}' has dynamic dimensions {dims}: give its "
                             f"shape with --input-shape {v.name}={example}{batch_hint}")
        if batch is not None:
            shapes[v.name] = tuple(dims)
    return shapes


def load_inputs(specs: Sequence[str], inputs: Sequence[tuple[str, tuple, str]],
                seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs from `--input` specs (NAME=FILE.npy, FILE.npy for a single-input model, or one
    .npz holding them all), else random ones. Shapes and dtypes are checked by the model."""
    if not specs:
        return probe_inputs(inputs, seed)
    names = [name for name, _, _ in inputs]
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        name, _, path = spec.rpartition("=")
        if not os.path.isfile(path):
            raise InputError(f"no such input file: {path}")
        try:
            array = np.load(path, allow_pickle=False)
            if isinstance(array, np.lib.npyio.NpzFile):
                with array as archive:
                    feeds.update({k: archive[k] for k in archive.files})
                continue
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise InputError(f"cannot read {path} as a numpy array (.npy or .npz): {e}") from e
        if not name:
            if len(names) != 1:
                raise InputError(f"the model has inputs {names}: give each as NAME=FILE.npy")
            name = names[0]
        feeds[name] = array
    return feeds


_quiet = False


@contextmanager
def step(message: str, total: int | None = None, unit: str | None = None) -> Iterator:
    """Show a long step on stderr: the message, then how long it took. On a terminal a progress
    line runs while it works: with a `unit`, the bar yielded counts them (`.update()`, of
    `total` when known), else a clock."""
    start = time.perf_counter()
    live = not _quiet and progress.on_terminal()
    if not _quiet and not live:
        print(f"{message} ...", end="", file=sys.stderr, flush=True)
    head = f"{message} ..." if live else ""
    shown = progress.bar(total, message, unit, quiet=not live) if unit else \
        progress.clock(f"{message} ...", quiet=not live)
    try:
        with shown as bar:
            yield bar
    except BaseException:
        if not _quiet:
            print(f"{head} failed", file=sys.stderr, flush=True)
        raise
    if not _quiet:
        print(f"{head} done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


def signature_of(model) -> list[tuple[str, tuple, str]]:
    """(name, shape, dtype) of each input of a Graph, CompiledModel or LoadedModel."""
    if hasattr(model, "signature"):
        return [(n, tuple(t.shape), t.dtype) for n, t in model.signature.inputs]
    if hasattr(model, "inputs") and model.inputs and isinstance(model.inputs[0], tuple):
        return list(model.inputs)
    return [(v.name, tuple(v.shape), v.dtype) for v in model.inputs]


def pass_list(spec: str | None):
    """--passes: None (the default pipeline and target passes), () for 'none', else the names."""
    if spec is None:
        return None
    names = [p.strip() for p in spec.split(",") if p.strip()]
    return () if names == ["none"] else names


def compile_model(graph, args):
    """`go.compile` with the compile options the command line gave (--target, --kernels,
    --passes, --threads, --build-threads, --tuning where the command has them)."""
    import graphopt as go
    options = {"kernels": getattr(args, "kernels", "tvm"),
               "passes": pass_list(getattr(args, "passes", None)),
               "threads": getattr(args, "threads", None),
               "build_threads": getattr(args, "build_threads", None),
               "tuning": getattr(args, "tuning", None)}
    with step(f"compiling '{graph.name}' for {args.target}"):
        model = go.compile(graph, target=args.target, **options)
    if options["tuning"] is not None and not _quiet:
        print(tuning_summary(model), file=sys.stderr, flush=True)
    return model


def tuning_summary(model) -> str:
    """How many of a compiled model's kernels took their schedule from tuning records."""
    from .targets.tvm.schedules.dispatch import TUNED
    tuned = sum(1 for rule in model.schedules.values() if rule == TUNED)
    return (f"tuning records from {model.options.tuning_dir()}: {tuned} of "
            f"{len(model.schedules)} kernels use them" if tuned else
            f"tuning records from {model.options.tuning_dir()}: none matches a kernel of this "
            f"model (each kernel keeps graphopt's schedule)")


def onnxruntime_ms(graph, feeds: dict, spec: str, repeat: int) -> tuple[float | None, str]:
    """Median onnxruntime latency of the model (its .onnx file, or the graph saved as ONNX by
    graphopt's exporter), or None and the reason it could not be timed."""
    try:
        import onnxruntime
        from .frontends.onnx import save_onnx
    except ImportError as e:
        return None, f"missing {e.name}"
    model = spec if spec.endswith(".onnx") else save_onnx(graph).SerializeToString()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return median_ms(lambda: session.run(None, feeds), repeat), ""


def output_path(path: str, suffix: str) -> str:
    """An output path from the command line, checked before any work is done. The command
    line creates no folder: the one to write into must exist."""
    if os.path.isdir(path):
        raise InputError(f"{path} is a folder: expected the path of the {suffix} file to write")
    if not path.endswith(suffix):
        raise InputError(f"{path}: expected an output path ending in {suffix}")
    folder = os.path.dirname(path)
    if folder and not os.path.isdir(folder):
        raise InputError(f"{path}: the folder {folder} does not exist")
    return path


def default_artifact_name(spec: str, target: str) -> str:
    """<model>_<target>.so in the current folder, <model> being the input file's stem or the
    zoo name (never the graph's own name, which a model file may set to anything)."""
    stem = os.path.splitext(os.path.basename(spec))[0]
    return f"{safe_file_name(stem)}_{safe_file_name(target, 'target')}.so"


# ---- commands ---------------------------------------------------------------------------------

@command("list", "list the zoo models")
def list_models(args) -> int:
    """List the built-in (zoo) models that the other commands accept by name."""
    from . import zoo
    for name in zoo.MODELS:
        print(name)
    return EXIT_OK


@command("show", "print a model's layers, parameters and MACs (zoo name, .onnx or exported .so)",
         MODEL, BATCH, INPUT_SHAPE, SEED,
         arg("--target", help="show the graph as compile builds it for this target (cpu, cuda): "
             "after graphopt's passes, with how each node will be computed"),
         KERNELS, JSON)
def show(args) -> int:
    """Print one row per node (op, output shape, parameters, MACs) and the totals; with
    --target, the graph compile lowers (passes run, target decisions shown) and the pass
    table. For an exported .so, print its target and input/output signature."""
    if args.model.endswith(".so"):
        from .runtime import read_export
        metadata, fatbin = read_export(args.model)
        if args.json:
            signature = Signature.from_dict(metadata)
            print_json("show", {"library": {
                "graph": metadata["graph"], "target": metadata["target"],
                "tvm": metadata.get("tvm"), "cpu_features": metadata.get("cpu_features", []),
                "inputs": [{"name": n, "shape": list(t.shape), "dtype": t.dtype}
                           for n, t in signature.inputs],
                "outputs": [{"name": n, "shape": list(t.shape), "dtype": t.dtype}
                            for n, t in signature.outputs],
                "gpu_binary_bytes": None if fatbin is None else len(fatbin)}})
            return EXIT_OK
        print(f"'{metadata['graph']}' exported for {metadata['target']} "
              f"(TVM {metadata.get('tvm', '?')})")
        signature = Signature.from_dict(metadata)
        for kind, items in (("input", signature.inputs), ("output", signature.outputs)):
            for name, type_ in items:
                print(f"  {kind:6} {name}: {type_}")
        if fatbin is not None:
            print(f"  GPU binary: {len(fatbin):,} bytes for {metadata.get('cuda_arch')}")
        return EXIT_OK
    from .analysis import summary, summary_dict
    graph = model_from(args)
    if args.target is None:
        if args.json:
            print_json("show", {"summary": summary_dict(graph)})
        else:
            print(summary(graph))
        return EXIT_OK
    from .targets.tvm.compile import optimize_for_target
    from .targets.tvm.options import CompileOptions
    with step(f"running graphopt's passes for {args.target}"):
        optimized, _ = optimize_for_target(graph, args.target,
                                           CompileOptions(kernels=args.kernels))
    if args.json:
        print_json("show", {"target": args.target,
                            "summary": summary_dict(optimized.graph, target_choices=True),
                            "optimize": optimized.to_dict()})
        return EXIT_OK
    print(summary(optimized.graph, target_choices=True))
    print()
    print(optimized.report)
    return EXIT_OK


@command("compile", "compile a model with TVM and export it as a shared library",
         MODEL, TARGET, KERNELS, PASSES, THREADS, BUILD_THREADS, TUNING, BATCH, INPUT_SHAPE, SEED,
         arg("-o", "--output", help="the .so to write (default: <model>_<target>.so in the "
             "current folder, <model> being the zoo name or the .onnx file's name)"),
         arg("--force", action="store_true", help="overwrite the output if it exists"))
def compile_(args) -> int:
    """Compile for the CPU or a CUDA arch (no GPU needed) and write one .so that `graphopt run`
    or `go.load` runs with only the TVM runtime. CUDA libraries embed the nvcc-built binary.
    The output path and the target are checked before any work; an existing output is kept
    unless --force."""
    from .targets.tvm.compile import resolve_target
    output = (output_path(args.output, ".so") if args.output
              else default_artifact_name(args.model, args.target))
    if os.path.exists(output) and not args.force:
        raise InputError(f"{output} exists: pass --force to overwrite it, or -o another path")
    resolve_target(args.target)     # an unknown target or CUDA arch: before the model is read
    graph = model_from(args)
    model = compile_model(graph, args)
    with step(f"exporting to {output}"):
        model.export(output)
    print(f"{output}: '{graph.name}' for {args.target}, {model.kernel_count()} kernels, "
          f"{os.path.getsize(output) / 2**20:.1f} MiB")
    if model.schedule_report is not None:
        print(model.schedule_report)
    return EXIT_OK


@command("compare", "compile (or load) a model and compare it with the reference interpreter",
         MODEL, TARGET, KERNELS, PASSES, THREADS, BUILD_THREADS, TUNING, BATCH, INPUT_SHAPE, SEED,
         INPUTS,
         arg("--library", metavar="FILE.so", type=existing_file,
             help="compare this exported library instead of compiling the model"),
         arg("--tolerance", type=tolerance, help="max error relative to the largest reference "
             "magnitude (default by dtype: 1e-4 for float32)"),
         arg("--per-layer", action="store_true",
             help="also compare every original layer and name the first divergent one"),
         arg("--reference", choices=("interpreter", "ort"), default="interpreter",
             help="what the outputs are compared with: graphopt's float64 interpreter "
             "(default) or, for an .onnx file, ONNX Runtime running the file"),
         JSON)
def compare(args) -> int:
    """Run the model in the float64 interpreter (or, with --reference ort, the .onnx file in
    ONNX Runtime) and compiled (or from --library), and compare every output. Exits 1 if any
    output is out of tolerance."""
    import graphopt as go
    ort_model = None
    if args.reference == "ort":
        if not args.model.endswith(".onnx"):
            raise InputError(f"--reference ort runs an .onnx file in ONNX Runtime; {args.model!r} "
                             "is not one (`graphopt convert` writes a zoo model as ONNX)")
        if args.per_layer:
            raise InputError("--per-layer compares every layer with the interpreter; ONNX "
                             "Runtime (--reference ort) gives only the model's outputs")
        ort_model = args.model
    graph = model_from(args)
    feeds = load_inputs(args.inputs, signature_of(graph), args.seed)
    if args.library and args.per_layer:
        raise InputError("--per-layer compiles the model here with every layer as an output; "
                         "a --library exposes only its outputs")
    compiler = None
    if args.library:
        with step(f"loading {args.library}"):
            candidate = go.load(args.library)
    elif args.per_layer:
        if args.target.startswith("cuda"):
            raise InputError("comparing a CUDA build runs it, which needs a GPU")
        candidate = graph       # compiled by compare, every lined-up layer an extra output

        def compiler(g, target):
            return compile_model(g, args)
    else:
        if args.target.startswith("cuda"):
            raise InputError("comparing a CUDA build runs it, which needs a GPU: compile with "
                             "`graphopt compile --target cuda`, then compare on the GPU machine "
                             "with --library")
        candidate = compile_model(graph, args)
    with step("running and comparing"):
        report = go.compare(graph, candidate, feeds, tolerance=args.tolerance,
                            per_layer=args.per_layer, compiler=compiler,
                            target=args.target if compiler else None, ort_model=ort_model)
    if args.json:
        print_json("compare", {"model": args.model, "target": None if args.library
                               else args.target, "library": args.library,
                               "reference": report.reference, "report": report.to_dict()})
    else:
        print(report)
        if args.per_layer:
            print(report.layer_table())
    return EXIT_OK if report.ok else EXIT_MISMATCH


@command("run", "run an exported .so with only the TVM runtime",
         arg("library", metavar="FILE.so", type=existing_file,
             help="a library written by `graphopt compile`"),
         INPUTS, SEED, THREADS,
         arg("--save", metavar="FILE.npz", help="write the outputs to this .npz"),
         arg("--expect", metavar="FILE", type=existing_file, help="compare the outputs with these "
             "(.npz by output name, or .npy for a single output); exit 1 if any differs by more "
             "than --tolerance relative to its largest magnitude"),
         arg("--tolerance", type=tolerance, default=1e-4, help="for --expect (default 1e-4)"),
         arg("--repeat", type=integer(0), default=0,
             help="also time this many runs (median; default 0: no timing)"))
def run(args) -> int:
    """Load the library through graphopt.runtime (no TVM compiler involved), run it once and
    print each output's shape and statistics."""
    from .runtime import load
    save = output_path(args.save, ".npz") if args.save else None
    with step(f"loading {args.library}"):
        model = load(args.library, threads=args.threads)
    feeds = load_inputs(args.inputs, model.inputs, args.seed)
    outputs = model.run(feeds)
    rows = [("output", "shape", "dtype", "min", "max", "mean")]
    for name, a in outputs.items():
        rows.append((name, "x".join(map(str, a.shape)), str(a.dtype), f"{a.min():.4g}",
                     f"{a.max():.4g}", f"{a.mean():.4g}"))
    print(format_table(rows))
    if args.repeat:
        times = model.latencies(feeds, warmup=min(10, args.repeat), repeat=args.repeat)
        print(f"latency: median {1e3 * float(np.median(times)):.3f} ms over {args.repeat} runs")
    if save:
        with atomic_open(save) as f:
            np.savez(f, **outputs)
    if args.expect:
        expected = load_inputs([args.expect], model.outputs, 0)
        bad = []
        for name, ref in expected.items():
            if name not in outputs or outputs[name].shape != ref.shape:
                bad.append(f"{name}: missing or of another shape")
                continue
            scale = float(np.abs(ref).max(initial=0.0)) or 1.0
            err = float(np.abs(outputs[name].astype(np.float64) - ref).max(initial=0.0)) / scale
            if err > args.tolerance:
                bad.append(f"{name}: relative error {err:.3g} > {args.tolerance:g}")
        print("expected outputs: " + ("all match" if not bad else "MISMATCH " + "; ".join(bad)))
        return EXIT_MISMATCH if bad else EXIT_OK
    return EXIT_OK


@command("bench", "time the compiled model against the interpreter and onnxruntime",
         MODEL, TARGET, KERNELS, PASSES, THREADS, BUILD_THREADS, TUNING, BATCH, INPUT_SHAPE, SEED,
         arg("--repeat", type=integer(1), default=20,
             help="timed runs per engine (median; default 20)"), JSON)
def bench(args) -> int:
    """Median latency of the TVM-compiled model, the numpy interpreter and onnxruntime (from the
    .onnx file, or from the graph exported to ONNX when graphopt can do that), as ratios to
    the compiled model."""
    graph = model_from(args)
    if args.target.startswith("cuda"):
        raise InputError("bench runs the model here; CUDA needs a GPU (use the runtime bundle, "
                         "tools/make_bundle.py, on the GPU machine)")
    model = compile_model(graph, args)
    feeds = probe_inputs(signature_of(graph), args.seed)
    batch = graph.inputs[0].shape[0] if graph.inputs and graph.inputs[0].shape else 1
    results = {}
    with step(f"timing compiled ({args.repeat} runs)"):
        results["compiled"] = median_ms(lambda: model.run(feeds), args.repeat)
    import graphopt as go
    with step("timing interpreter"):
        results["interpreter"] = median_ms(lambda: go.interpret(graph, feeds),
                                           max(3, args.repeat // 5))
    with step("timing onnxruntime"):
        ort_ms, why = onnxruntime_ms(graph, feeds, args.model, args.repeat)
    if ort_ms is not None:
        results["onnxruntime"] = ort_ms
    if args.json:
        print_json("bench", {"model": args.model, "graph": graph.name, "batch": batch,
                             "target": args.target, "repeat": args.repeat,
                             "engines": [{"engine": k, "median_ms": v,
                                          "ratio_to_compiled": v / results["compiled"]}
                                         for k, v in results.items()],
                             "onnxruntime_skipped": None if ort_ms is not None else why})
        return EXIT_OK
    rows = [("engine", "median ms", "x compiled")]
    rows += [(k, f"{v:.3f}", f"{v / results['compiled']:.2f}") for k, v in results.items()]
    print(f"'{graph.name}' batch {batch}, target {args.target}")
    print(format_table(rows))
    if ort_ms is None:
        print(f"onnxruntime: not timed ({why})")
    return EXIT_OK


@command("optimize", "run graph passes on a model, print the per-pass report, save as .onnx",
         MODEL, BATCH, INPUT_SHAPE, SEED,
         arg("-o", "--output", metavar="FILE.onnx", help="write the optimized model here"),
         arg("--passes", help="comma-separated pass names (default: the default pipeline; "
             "'none': no pass)"),
         arg("--no-check", action="store_true",
             help="skip comparing each pass's result with the graph before it on a probe input"),
         JSON)
def optimize(args) -> int:
    """Run the passes (verifying the graph after each and, unless --no-check, comparing it with
    the graph before the pass on a probe input) and print nodes, parameters, MACs, time and
    error per pass. A pass that changes the result fails with the pass and node named."""
    from .passes import optimize as run_passes
    if args.output:
        output_path(args.output, ".onnx")
    graph = model_from(args)
    with step(f"optimizing '{graph.name}'"):
        result = run_passes(graph, pass_list(args.passes), check=not args.no_check)
    if args.json:
        print_json("optimize", {"model": args.model, "output": args.output,
                                "result": result.to_dict()})
    else:
        print(result.report)
    if args.output:
        from .frontends.onnx import save_onnx
        with step(f"writing {args.output}"):
            save_onnx(result.graph, args.output)
    return EXIT_OK


def sample_batches(path: str, graph, labels: bool = False):
    """Batches from an .npz holding, per model input, samples stacked along axis 0 (or an .npy
    for a one-input model), split into batches of the input's own leading size. With `labels`,
    (batches, the .npz's optional 'labels' array: one class index per sample, or None)."""
    feeds = load_inputs([path], [(v.name, v.type.shape, v.dtype) for v in graph.inputs], 0)
    names = [v.name for v in graph.inputs]
    classes = feeds.pop("labels", None) if labels and "labels" not in names else None
    if sorted(feeds) != sorted(names):
        raise InputError(f"{path}: expected arrays named {names}"
                         f"{' (and optionally labels)' if labels else ''}, found "
                         f"{sorted(feeds)}")
    counts = set()
    for v in graph.inputs:
        array, batch = feeds[v.name], v.type.shape[0] if v.type.shape else 1
        if array.shape[1:] != tuple(v.type.shape[1:]) or batch < 1 or len(array) % batch:
            raise InputError(f"{path}: '{v.name}' expected samples of shape "
                             f"{tuple(v.type.shape[1:])} stacked along axis 0 in a multiple of "
                             f"{batch}, found {array.shape}")
        counts.add(len(array) // batch)
    if len(counts) != 1 or 0 in counts:
        raise InputError(f"{path}: expected the same number of samples (at least one batch) for "
                         f"every input, found batches {sorted(counts)}")
    batches = counts.pop()
    split = [{v.name: feeds[v.name][i * v.type.shape[0]:(i + 1) * v.type.shape[0]]
              for v in graph.inputs} for i in range(batches)]
    if not labels:
        return split
    if classes is not None:
        samples = batches * (graph.inputs[0].type.shape[0] if graph.inputs[0].type.shape else 1)
        if classes.ndim != 1 or len(classes) != samples or \
                not np.issubdtype(classes.dtype, np.integer):
            raise InputError(f"{path}: expected 'labels' as {samples} integer class indices, "
                             f"one per sample, found {classes.dtype}{list(classes.shape)}")
    return split, classes


def top1_metric(graph, labels: np.ndarray):
    """Top-1 accuracy of the graph's first output (class scores on axis 1) against `labels`."""
    name = graph.output_names[0]
    return lambda outputs: float((outputs[name].reshape(len(labels), -1).argmax(1)
                                  == labels).mean())


@command("quantize", "quantize a model to int8 (calibrated on sample inputs), float16 or bfloat16; "
         "save it as .onnx or compile it to a .so",
         MODEL, BATCH, INPUT_SHAPE, SEED,
         arg("--dtype", choices=("int8", "float16", "bfloat16"), default="int8",
             help="what the graph computes in (default int8)"),
         arg("--calib", metavar="FILE.npz", type=existing_file,
             help="int8: calibration samples, per input name an array of samples stacked along "
             "axis 0 (split into batches of the model's batch size)"),
         arg("--method", choices=("minmax", "percentile", "entropy", "mse"), default="minmax",
             help="int8: how each activation's range is chosen (default minmax)"),
         arg("--per-tensor", action="store_true",
             help="int8: one weight scale per tensor (default: one per output channel)"),
         arg("--reduce-range", action="store_true",
             help="int8: 7-bit weights, which x86 CPUs without VNNI multiply faster "
                  "(vpmaddubsw), as ONNX Runtime's reduce_range"),
         arg("--keep", help="comma-separated node or op names that stay float32"),
         arg("--eval", metavar="FILE.npz", type=existing_file,
             help="int8: held-out samples (as --calib; with an optional 'labels' array of class "
             "indices) that --sensitivity and --budget measure on (default: the --calib ones)"),
         arg("--sensitivity", action="store_true",
             help="int8: print each layer's error (and top-1 drop with labels) when quantized "
             "alone, most sensitive first"),
         arg("--budget", type=tolerance, metavar="X",
             help="int8: keep the fewest layers in float32 for which the relative output error "
             "(with labels: the top-1 drop, 0.005 = half a point) stays within X"),
         TARGET,
         arg("-o", "--output", required=True, metavar="FILE.onnx|FILE.so",
             help="the quantized model as ONNX, or compiled for --target"))
def quantize(args) -> int:
    """Calibrate (int8) and quantize the model, print the pass report and how far the quantized
    graph's outputs are from the float model's on the first evaluation batch (or a probe
    input), then write it as ONNX or compile and export it. --sensitivity and --budget measure
    on the --eval samples (top-1 against their labels when given)."""
    from . import quantization
    suffix = ".so" if args.output.endswith(".so") else ".onnx"
    output_path(args.output, suffix)
    if args.dtype == "int8" and not args.calib:
        raise InputError("--dtype int8 needs --calib FILE.npz: sample inputs to calibrate "
                         "activation ranges on")
    int8_only = [flag for flag, given in (("--eval", args.eval), ("--budget",
                 args.budget is not None), ("--sensitivity", args.sensitivity)) if given]
    if args.dtype != "int8" and int8_only:
        raise InputError(f"{', '.join(int8_only)} apply to --dtype int8, not {args.dtype}")
    keep = [k.strip() for k in args.keep.split(",") if k.strip()] if args.keep else []
    graph = model_from(args)
    feeds, metric = probe_inputs(graph, args.seed), None
    if args.dtype == "int8":
        batches = sample_batches(args.calib, graph)
        held_out, labels = sample_batches(args.eval or args.calib, graph, labels=True)
        metric = top1_metric(graph, labels) if labels is not None else None
        feeds = held_out[0]

        with step(f"calibrating ({args.method})", len(batches), "batch") as shown:
            calib = quantization.calibrate(graph, batches, args.method,
                                           progress=lambda index: shown.update())
        if args.sensitivity:
            with step("int8 sensitivity, layer by layer", None, "layer") as shown:
                def measured(index: int, layer: str) -> None:
                    shown.set_description_str(f"int8 sensitivity: layer {index + 1} ({layer})")
                    shown.update()

                table = quantization.sensitivity(graph, calib, held_out, metric, keep=keep,
                                                 per_channel=not args.per_tensor,
                                                 reduce_range=args.reduce_range,
                                                 progress=measured)
            print(table)
        with step(f"quantizing '{graph.name}' to int8"
                  + (f" within budget {args.budget:g}" if args.budget is not None else "")):
            result = quantization.quantize(graph, calib, "int8", keep,
                                           per_channel=not args.per_tensor,
                                           reduce_range=args.reduce_range,
                                           budget=args.budget,
                                           eval_inputs=held_out if args.budget is not None
                                           else None, metric=metric)
    else:
        with step(f"converting '{graph.name}' to {args.dtype}"):
            result = quantization.quantize(graph, dtype=args.dtype, keep=keep)
    print(result.report)
    from .compare import compare
    print(compare(graph, result.graph, feeds))
    if metric is not None:
        from .evaluation import run_batches
        scores = [metric(run_batches(g, held_out)) for g in (graph, result.graph)]
        print(f"top-1 on {len(labels)} samples of {args.eval or args.calib}: float32 "
              f"{scores[0]:.2%}, int8 {scores[1]:.2%} ({100 * (scores[0] - scores[1]):+.2f} "
              f"points lost)")
    write_model(result.graph, args.output, args.target)
    return EXIT_OK


def write_model(graph, path: str, target: str) -> None:
    """`graph` as ONNX (a path ending .onnx) or compiled for `target` and exported (.so)."""
    if not path.endswith(".so"):
        from .frontends.onnx import save_onnx
        with step(f"writing {path}"):
            save_onnx(graph, path)
        return
    from .targets.tvm import compile_graph
    with step(f"compiling for {target}"):
        model = compile_graph(graph, target)
    with step(f"exporting to {path}"):
        model.export(path)


def names(text: str | None) -> list[str] | None:
    """A comma-separated list of names (None when not given)."""
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def fraction(text: str) -> float:
    """A number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], found {text}")
    return value


COMPRESSION_ARGUMENTS = (
    arg("--data", metavar="FILE.npz", type=existing_file,
        help="sample inputs (as quantize's --calib, with an optional 'labels' array): "
        "data-driven choices, the errors in the table, and what --budget measures on"),
    arg("--layers", help="comma-separated layer names to consider (default: all)"),
    arg("--budget", type=tolerance, metavar="X",
        help="the most compression per layer for which the relative output error on --data "
        "(with labels: the top-1 drop, 0.01 = one point) stays within X"),
    TARGET,
    arg("-o", "--output", required=True, metavar="FILE.onnx|FILE.so",
        help="the compressed model as ONNX, or compiled for --target"))


def compression_data(args, graph):
    """(batches or None, metric or None) from --data; --budget needs it."""
    if args.budget is not None and not args.data:
        raise InputError("--budget needs --data FILE.npz: the samples it is measured on")
    if not args.data:
        return None, None
    batches, labels = sample_batches(args.data, graph, labels=True)
    return batches, top1_metric(graph, labels) if labels is not None else None


def finish_compression(graph, result, args, batches, metric) -> int:
    print(result.report)
    from .compare import compare
    where = f"the first batch of {args.data}" if batches else "a probe input"
    report = compare(graph, result.graph, batches[0] if batches else probe_inputs(graph, args.seed))
    for o in report.outputs:    # compression is lossy: how far, not a pass/fail verdict
        print(f"output '{o.name}' vs the original on {where}: max rel error {o.max_rel:.3g}, "
              f"cosine {o.cosine:.4f}")
    if metric is not None:
        from .evaluation import run_batches
        before, after = (metric(run_batches(g, batches)) for g in (graph, result.graph))
        print(f"top-1 on the {args.data} samples: original {before:.2%}, compressed "
              f"{after:.2%} ({100 * (before - after):+.2f} points lost)")
    write_model(result.graph, args.output, args.target)
    return EXIT_OK


@command("prune", "remove the least important channels of each layer (the graph really shrinks); "
         "save as .onnx or compile to a .so", MODEL, BATCH, INPUT_SHAPE, SEED,
         arg("--ratio", type=float, default=None,
             help="fraction of each layer's output channels removed (default 0.5; with "
             "--budget, the most tried, default 0.9)"),
         arg("--criterion", choices=("l1", "l2", "bn_gamma", "activation"), default="l1",
             help="how channels are ranked (default l1; activation needs --data)"),
         arg("--multiple-of", type=integer(1), default=1, metavar="N",
             help="each layer keeps a multiple of N channels (e.g. 8 or 16: whole vectors)"),
         arg("--unstructured", action="store_true",
             help="zero the smallest weights instead (same shapes; no speed-up)"),
         *COMPRESSION_ARGUMENTS)
def prune(args) -> int:
    """Rank each layer's output channels, remove the lowest --ratio of them together with every
    weight that reads them (channels tied by residual adds, concats and groups go together),
    print one row per layer (channels, params, MACs, error), compare with the original, and
    write the result as ONNX or a compiled library."""
    from .compression import prune as prune_graph
    output_path(args.output, ".so" if args.output.endswith(".so") else ".onnx")
    graph = model_from(args)
    batches, metric = compression_data(args, graph)
    with step(f"pruning '{graph.name}'"):
        result = prune_graph(graph, args.ratio, criterion=args.criterion, data=batches,
                             structured=not args.unstructured, layers=names(args.layers),
                             multiple_of=args.multiple_of,
                             budget=args.budget, metric=metric)
    return finish_compression(graph, result, args, batches, metric)


@command("factorize", "factor convolutions and linear layers into 1x1 bottlenecks (low rank); "
         "save as .onnx or compile to a .so", MODEL, BATCH, INPUT_SHAPE, SEED,
         arg("--energy", type=fraction, default=None,
             help="each layer keeps the smallest rank holding this fraction of its spectrum's "
             "energy (default 0.9)"),
         arg("--rank-ratio", type=fraction, default=None,
             help="each layer keeps this fraction of its full rank instead"),
         arg("--min-saving", type=float, default=None, metavar="F",
             help="factor a layer only when that saves this fraction of its MACs (default 0.2)"),
         *COMPRESSION_ARGUMENTS)
def factorize(args) -> int:
    """Factor each convolution (1x1 reduce -> KxK, or KxK -> 1x1 expand, whichever is cheaper)
    and linear layer at the rank --energy or --rank-ratio gives (from the layer's responses on
    --data when given), print one row per layer (rank, params, MACs, error), compare with the
    original, and write the result as ONNX or a compiled library."""
    from .compression import factorize as factorize_graph
    output_path(args.output, ".so" if args.output.endswith(".so") else ".onnx")
    graph = model_from(args)
    batches, metric = compression_data(args, graph)
    options = {"budget": args.budget, "metric": metric} if args.budget is not None else {}
    if args.min_saving is not None:
        options["min_saving"] = args.min_saving
    with step(f"factorizing '{graph.name}'"):
        result = factorize_graph(graph, args.energy, rank_ratio=args.rank_ratio, data=batches,
                                 layers=names(args.layers), **options)
    return finish_compression(graph, result, args, batches, metric)


@command("convert", "read a model (zoo name or .onnx) and write it as .onnx, optionally after passes",
         MODEL, arg("output", metavar="OUTPUT.onnx", help="the ONNX file to write"), BATCH, INPUT_SHAPE, SEED,
         arg("--passes", help="comma-separated pass names to run first (default: none)"))
def convert(args) -> int:
    """Import the model (an .onnx file is checked and converted into graphopt's IR), optionally
    run graph passes, and export it as ONNX (checked by onnx.checker; names kept)."""
    from .frontends.onnx import save_onnx
    output_path(args.output, ".onnx")
    graph = model_from(args)
    if args.passes:
        from .passes import optimize as run_passes
        with step(f"optimizing '{graph.name}'"):
            graph = run_passes(graph, pass_list(args.passes)).graph
    with step(f"writing {args.output}"):
        model = save_onnx(graph, args.output)
    print(f"{args.output}: {len(model.graph.node)} ONNX nodes from {len(graph.nodes)} graphopt "
          f"nodes, opset {model.opset_import[0].version}")
    return EXIT_OK


@command("tune", "tune a model's conv/matmul kernels for this CPU with MetaSchedule",
         MODEL, BATCH, INPUT_SHAPE, SEED,
         arg("--trials", type=integer(1), default=64,
             help="MetaSchedule trials in all (default 64)"),
         arg("--cache-dir", help="tuning database root (default $GRAPHOPT_TUNING_DIR or "
                                 "~/.cache/graphopt/tuning)"))
def tune(args) -> int:
    """Search schedules for the model's GEMM-like kernels and keep, per kernel, the tuned one
    only if it beats graphopt's own schedule. CPU compiles given `--tuning user` (or the
    --cache-dir folder) use the records (needs the `tune` extra: xgboost, cloudpickle)."""
    from .targets.tvm.tuning import require_tune_extra, tune as run_tuning
    require_tune_extra()        # before any work: `pip install graphopt[tune]`
    graph = model_from(args)
    with step(f"tuning '{graph.name}' ({args.trials} trials)", args.trials, "trial") as shown:
        report = run_tuning(graph, args.trials, args.cache_dir,
                            progress=lambda measured, total: shown.update(measured - shown.n))
    print(report)
    return EXIT_OK


@command("report", "write one HTML page of what the optimizer did: graphs, passes, error per "
         "layer, time per kernel, memory", MODEL, BATCH, INPUT_SHAPE, SEED, INPUTS, THREADS,
         arg("--passes", help="comma-separated pass names (default: the default pipeline; "
             "'none': no pass)"),
         arg("--quantize", choices=("float16", "bfloat16", "int8"),
             help="convert with `graphopt quantize`'s pipeline instead (int8 needs --calib)"),
         arg("--calib", metavar="FILE.npz", type=existing_file,
             help="int8: calibration samples, as quantize's --calib"),
         arg("--prune", type=fraction, metavar="RATIO",
             help="first remove this fraction of each layer's channels (structured pruning)"),
         arg("--no-profile", action="store_true",
             help="do not compile and time the kernels (nor profile ONNX Runtime)"),
         arg("-o", "--output", required=True, metavar="FILE.html", help="the page to write"),
         JSON)
def report(args) -> int:
    """Optimize (or prune, or quantize) the model and write one self-contained HTML page: the
    graph before and after, the pass table, MACs and params per layer, the error per layer
    against the float64 reference, the compiled model's time per kernel beside ONNX Runtime's
    per node, and memory per precision (needs the `report` extra; docs/report.md)."""
    from .report import report as build_report
    output = output_path(args.output, ".html")
    if args.quantize == "int8" and not args.calib:
        raise InputError("--quantize int8 needs --calib FILE.npz: sample inputs to calibrate "
                         "activation ranges on")
    graph = model_from(args)
    feeds = load_inputs(args.inputs, signature_of(graph), args.seed)
    calibration = sample_batches(args.calib, graph) if args.calib else None

    with step(f"building the report of '{graph.name}'") as shown:     # on a terminal, the
        def progress(stage: str) -> None:                              # stage it is at
            shown.set_description_str(f"report: {stage} ...")

        built = build_report(graph, output, passes=pass_list(args.passes),
                             quantize=args.quantize, prune=args.prune, calibration=calibration,
                             inputs=feeds, seed=args.seed, profile=not args.no_profile,
                             threads=args.threads, progress=progress)
    if args.json:
        print_json("report", {"model": args.model, **built.to_dict()})
        return EXIT_OK
    sections = built.sections
    first = sections["compare"]["first_divergent"]
    print(f"{output}: {built.svgs} pictures; {sections['totals']['before']['nodes']} -> "
          f"{sections['totals']['after']['nodes']} nodes; first divergent layer: "
          f"{first or 'none'}" + (f"; compiled {sections['compiled_ms']:.3f} ms per run"
                                  if sections["compiled_ms"] is not None else ""))
    return EXIT_OK


@command("view", "open a model (or its optimized graph) in Netron, fused ops with their "
         "attributes", MODEL, BATCH, INPUT_SHAPE, SEED,
         arg("--optimized", nargs="?", const="default", metavar="PASSES",
             help="show the graph after passes: the default pipeline, or these comma-separated "
             "pass names"),
         arg("--target", help="show the graph as compile builds it for this target (cpu, cuda): "
             "after graphopt's passes and the target's, fused nodes saying how they are "
             "computed"),
         arg("--host", default="localhost", help="address Netron serves on (default localhost)"),
         arg("--port", type=integer(0), default=0, help="port (default: a free one)"),
         arg("--no-browser", action="store_true", help="serve only; open the printed address"),
         arg("-o", "--output", metavar="FILE.onnx", help="also keep the file Netron shows"))
def view(args) -> int:
    """Export the model for Netron (graphopt's fused nodes as `ai.graphopt` ops carrying their
    attributes and the original nodes they stand for) and serve it until Ctrl-C (needs the
    `view` extra: netron)."""
    import tempfile
    from .files import safe_file_name
    from .report.extras import require
    from .report.view import save_view, serve
    netron = require("netron", "view", "graphopt view")
    if args.output:
        output_path(args.output, ".onnx")
    graph = model_from(args)
    passes = None if args.optimized in (None, "default") else pass_list(args.optimized)
    if args.target is not None:
        from .targets.tvm.compile import optimize_for_target
        from .targets.tvm.options import CompileOptions
        graph = optimize_for_target(graph, args.target, CompileOptions(passes=passes))[0].graph
    elif args.optimized is not None:
        from .passes import optimize as run_passes
        graph = run_passes(graph, passes).graph
    with tempfile.TemporaryDirectory(prefix="graphopt-view-") as folder:
        path = args.output or os.path.join(folder, f"{safe_file_name(graph.name)}.onnx")
        save_view(graph, path, decided=args.target is not None)
        host, port = serve(path, args.host, args.port, browse=not args.no_browser)
        print(f"{path} in Netron at http://{host}:{port} (Ctrl-C stops)", flush=True)
        netron.wait()
    return EXIT_OK


# ---- entry point ------------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (exit 2) instead of the usage and the error."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="graphopt",
        description="Define CNNs, compile them with TVM for CPU or CUDA, export, run and compare "
                    "them with the reference interpreter.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"graphopt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        sub = subparsers.add_parser(cmd.name, help=cmd.help, description=cmd.run.__doc__,
                                    epilog=EPILOG,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        for flags, options in cmd.arguments:
            sub.add_argument(*flags, **options)
        sub.set_defaults(run=cmd.run)
    return parser


def exit_code_for(error: BaseException) -> int:
    """EXIT_FAILED for a valid request that failed (lowering, a pass, writing the output, any
    error graphopt did not foresee), EXIT_USAGE for the other GraphoptErrors: a bad argument,
    model, file or input (OptionError, InputError, ModelFormatError, ShapeError, ...)."""
    if isinstance(error, (LoweringError, PassError, WriteError)):
        return EXIT_FAILED
    if isinstance(error, GraphoptError):
        return EXIT_USAGE
    return EXIT_FAILED


_interrupted = False


@contextmanager
def interrupts_recorded() -> Iterator[None]:
    """While inside, SIGINT is recorded before it raises KeyboardInterrupt as usual: TVM turns a
    KeyboardInterrupt raised in its Python callbacks into a RuntimeError (and a LoweringError
    wraps that), so `main` asks the record, not the exception, whether the user interrupted.
    A handler the program installed itself, an ignored SIGINT and other threads are left alone."""
    global _interrupted
    _interrupted = False
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def record(signum, frame):
        global _interrupted
        _interrupted = True
        signal.default_int_handler(signum, frame)
    signal.signal(signal.SIGINT, record)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]); returns the exit code (EXIT_*)."""
    try:
        code = run_command_line(argv)
        sys.stdout.flush()      # a reader gone shows here, not in Python's flush at exit
        return code
    except BrokenPipeError:
        code = closed_output_code()
        if code is None:
            raise
        return code


def run_command_line(argv: Sequence[str] | None) -> int:
    global _quiet
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:     # --help, or a bad argument (one line on stderr)
        if e.code in (None, 0):   # argparse ignores a failed write of the help
            return closed_output_code() or EXIT_OK
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    _quiet = args.quiet
    try:
        with interrupts_recorded():
            code = args.run(args)
    except KeyboardInterrupt:
        return interrupted()
    except Exception as e:  # every failure becomes one line and an exit code
        if _interrupted:    # the interrupt surfaced as another error (see interrupts_recorded)
            return interrupted()
        if isinstance(e, BrokenPipeError) and closed_output_code():
            return EXIT_CLOSED_OUTPUT   # quietly: nobody reads what was left to say
        if args.debug:
            traceback.print_exc()
        kind = "error" if isinstance(e, GraphoptError) else f"error ({type(e).__name__})"
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = "" if args.debug or isinstance(e, GraphoptError) else \
            " (rerun with --debug for the traceback)"
        print(f"graphopt {args.command}: {kind}: {message}{hint}", file=sys.stderr)
        return exit_code_for(e)
    return interrupted() if _interrupted else code


def closed_output_code() -> int | None:
    """EXIT_CLOSED_OUTPUT if stdout or stderr is a pipe or socket whose reader has gone (a
    BrokenPipeError from anything else is an ordinary failure), else None. The closed streams
    are pointed at /dev/null, so that nothing written later (Python's flush at exit included)
    fails on them again, as Python's documentation recommends for SIGPIPE."""
    closed = []
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):   # replaced by a non-file (a test capture)
            continue
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0)):
            closed.append(fd)
    for fd in closed:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    return EXIT_CLOSED_OUTPUT if closed else None


def interrupted() -> int:
    print("interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
