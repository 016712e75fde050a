"""Run every case of a graphopt runtime bundle: load the exported library with only the TVM
runtime, check the outputs against the float64 interpreter's, and time it (median of many runs
after warm-up). Copied into the bundle as run_bundle.py; needs Python, numpy and the files
beside it (apache-tvm-ffi comes as a wheel in wheels/, unpacked into site/ on first use).
Libraries that take their weights as parameters get them rebuilt from the bundled graphopt zoo,
or read from the bundle (int8 weights, which only calibration could rebuild).

    python run_bundle.py [--device cpu|cuda|all] [--cases NAME ...] [--warmup 10]
                         [--repeat 100] [--torch]

--torch also runs each case with PyTorch eager on the same device (graphopt/torch_eager.py, built
from the bundled zoo) and reports its error and latency; on a GPU three ways: with torch's
defaults (cuDNN convolutions in TF32 on sm_80+), in IEEE float32 (TF32 off, as graphopt's
float32 kernels compute) and under float16 autocast. Needs torch on the machine. Torch runs
the float32 model, also for a quantized case, whose references it then differs from by the
quantization's error.

Exit status: 0 all run cases match, 1 a mismatch, 2 the bundle cannot run here.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))


def prepare_imports() -> None:
    """Make tvm_ffi importable: unpack the wheel for this Python (if carried) into site/."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    site = os.path.join(HERE, "site")
    for wheel in glob.glob(os.path.join(HERE, "wheels", f"apache_tvm_ffi-*-{tag}-*.whl")):
        if not os.path.isdir(os.path.join(site, "tvm_ffi")):
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(site)
        sys.path.insert(0, site)
    sys.path.insert(0, HERE)   # runtime.py and typing_extensions.py
    os.environ.setdefault("GRAPHOPT_TVM_RUNTIME_DIR", os.path.join(HERE, "lib"))


def one_line(error: Exception) -> str:
    """`error`'s type and the first line of its message, for the results table."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def largest_error(found, expected) -> tuple[float, float]:
    """The largest absolute difference of `found` from `expected` and the largest reference
    magnitude, both in float64."""
    import numpy as np
    expected = expected.astype(np.float64)
    return (float(np.abs(found.astype(np.float64) - expected).max(initial=0.0)),
            float(np.abs(expected).max(initial=0.0)))


def relative_error(found, expected) -> float:
    error, scale = largest_error(found, expected)
    return error / (scale or 1.0)


def within(found, expected, tolerance: dict) -> bool:
    """Whether `found` is within the relative tolerance (of the largest reference magnitude),
    plus the absolute one: one quantization step of an int8 model's output (a value at a
    rounding tie), the relative part covering the float32 rounding of that step."""
    error, scale = largest_error(found, expected)
    return error <= tolerance["relative"] * scale + tolerance["absolute"]


def compiled_weights(graph, weights: dict) -> dict:
    """The weights the library was compiled with: those of the zoo graph (in the case's
    precision: float32 or float16) after the graphopt passes `compile` ran ("default": the
    default pipeline; a list of pass names; [] none). The passes are numpy code, so they
    rebuild the same arrays here (digests are checked)."""
    from graphopt.passes import optimize
    from graphopt.tools.bundle import quantized
    graph = quantized(graph, weights.get("precision", "float32"), weights.get("seed", 0))
    passes = weights.get("passes", [])
    if passes != []:
        graph = optimize(graph, None if passes == "default" else passes).graph
    return {name: c.data for name, c in graph.constants.items()}


def zoo_graph(case: dict, seed: int):
    from graphopt import zoo   # the bundled source: pure Python + numpy
    return zoo.MODELS[case["model"]](batch=case["batch"], seed=seed)


# Torch's ways of running a float32 model on a GPU, as results keys and table headers.
TORCH_MODES = {"torch": "torch", "torch_ieee": "ieee", "torch_fp16": "fp16"}


@contextlib.contextmanager
def ieee_float32():
    """torch with TF32 off: its default lets cuDNN run float32 convolutions on TF32 tensor cores
    (10-bit mantissas) on sm_80 and newer; graphopt's float32 kernels compute in IEEE float32."""
    import torch
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def torch_eager(graph, device: str, feeds: dict, references: dict, warmup: int,
                repeat: int) -> dict:
    """Error against the references and median latency of PyTorch eager on `device`; on a GPU
    also in IEEE float32 and under float16 autocast (errors against the same references)."""
    import torch
    from graphopt.timing import median_ms
    from graphopt.torch_eager import TorchEager
    forward = TorchEager(graph, device)
    inputs = forward.to_device(feeds)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    modes = {"torch": contextlib.nullcontext}
    if device == "cuda":
        modes["torch_ieee"] = ieee_float32
        modes["torch_fp16"] = lambda: torch.autocast("cuda", dtype=torch.float16)
    result = {"torch": torch.__version__, "torch_cudnn_tf32": torch.backends.cudnn.allow_tf32}
    for key, mode in modes.items():
        with mode():
            outputs = {v.name: t.float().cpu().numpy() for v, t in
                       zip(graph.outputs, forward.run_tensors(inputs))}
            result[f"{key}_median_ms"] = median_ms(lambda: (forward.run_tensors(inputs), sync()),
                                                   repeat, warmup)
        result[f"{key}_max_rel_error"] = max(relative_error(outputs[k], r)
                                             for k, r in references.items())
    return result


def run_case(case: dict, seed: int, warmup: int, repeat: int, with_torch: bool) -> dict:
    import numpy as np
    import runtime
    model = runtime.load(os.path.join(HERE, case["library"]))
    weights = case.get("weights") or {}
    graph = zoo_graph(case, seed) if "zoo" in weights or with_torch else None
    if "arrays" in weights:   # stored in the bundle
        model.bind_weights({name: np.load(os.path.join(HERE, path))
                            for name, path in weights["arrays"].items()})
    elif "zoo" in weights:    # rebuilt from the zoo
        model.bind_weights(compiled_weights(graph, weights))
    feeds = {name: np.load(os.path.join(HERE, path)) for name, path in case["inputs"].items()}
    references = {name: np.load(os.path.join(HERE, path))
                  for name, path in case["references"].items()}
    outputs = model.run(feeds)
    errors = {name: relative_error(outputs[name], ref) for name, ref in references.items()}
    times = model.latencies(feeds, warmup=warmup, repeat=repeat)
    result = {"case": case["name"], "device": case["device"], "status": "ran",
              "ok": all(within(outputs[name], ref, case["tolerances"][name])
                        for name, ref in references.items()),
              "max_rel_error": max(errors.values()), "median_ms": 1e3 * float(np.median(times)),
              "min_ms": 1e3 * float(np.min(times)), "runs": repeat}
    if with_torch:
        try:
            result.update(torch_eager(graph, case["device"], feeds, references, warmup, repeat))
        except Exception as e:  # our case ran: keep it, say why torch did not
            result["torch_error"] = one_line(e)
    return result


def torch_header() -> str:
    return "".join(f" {name + ' ms':>9}" for name in TORCH_MODES.values()) + \
        "".join(f" {'ours/' + name:>10}" for name in TORCH_MODES.values())


def torch_columns(result: dict) -> str:
    """Torch eager's medians (each way it ran; nan where it did not) and our time over each."""
    if "torch_median_ms" not in result:
        return f" torch failed: {result.get('torch_error', '')}"
    times = [result.get(f"{key}_median_ms", float("nan")) for key in TORCH_MODES]
    return "".join(f" {t:9.3f}" for t in times) + \
        "".join(f" {result['median_ms'] / t:10.2f}" for t in times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                        help="run only the cases for this device (default all)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--results", default="results.json", help="where to write the results")
    parser.add_argument("--cases", nargs="+", metavar="NAME",
                        help="run only these cases (names as the table prints them)")
    parser.add_argument("--torch", action="store_true",
                        help="also time PyTorch eager on the same device (needs torch)")
    args = parser.parse_args(argv)
    prepare_imports()
    with open(os.path.join(HERE, "manifest.json")) as f:
        manifest = json.load(f)
    results = []
    for case in manifest["cases"]:
        if args.device not in ("all", case["device"]) or \
                args.cases and case["name"] not in args.cases:
            results.append({"case": case["name"], "device": case["device"], "status": "skipped"})
            continue
        try:
            results.append(run_case(case, manifest["seed"], args.warmup, args.repeat,
                                    args.torch))
        except Exception as e:  # report the case and go on with the others
            results.append({"case": case["name"], "device": case["device"], "status": "failed",
                            "error": one_line(e)})
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)   # progress, as it ran
    results += [{"case": f["case"], "device": "-", "status": "not built", "error": f["error"]}
                for f in manifest.get("not_built", [])]
    print(f"{'case':36} {'device':6} {'status':8} {'max rel err':>11} {'median ms':>10} ok"
          + (torch_header() if args.torch else ""))
    for r in results:
        if r["status"] == "ran":
            print(f"{r['case']:36} {r['device']:6} {'ran':8} {r['max_rel_error']:11.2e} "
                  f"{r['median_ms']:10.3f} {'yes' if r['ok'] else 'NO '}"
                  + (torch_columns(r) if args.torch else ""))
        else:
            print(f"{r['case']:36} {r['device']:6} {r['status']:8} {r.get('error', '')}")
    # Written beside and renamed, so a reader never sees half a results file (this script runs
    # on its own, without graphopt.files).
    path = os.path.join(HERE, args.results) if not os.path.isabs(args.results) else args.results
    partial = f"{path}.{os.getpid()}.tmp"
    try:
        with open(partial, "w") as f:
            json.dump({"python": sys.version.split()[0], "results": results}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    if any(r["status"] == "failed" for r in results):
        return 2
    return 0 if all(r.get("ok", True) for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
