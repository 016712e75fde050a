"""Assemble a graphopt runtime bundle (see graphopt/tools/bundle.py) for a machine with only
Python + numpy, e.g. a lent GPU machine:

    python tools/make_bundle.py build/bundle resnet18:1:cuda resnet18:8:cuda --ffi-wheel auto
    python tools/make_bundle.py build/lowbit resnet18:1:cpu:int8 resnet18:1:cpu:bfloat16
    python tools/make_bundle.py build/gpu resnet18:1:cuda ... --archive   # build/gpu.tar.xz
    # there:  python3 bundle/run_bundle.py --device cuda  (after tar xJf, for an archive)
"""
import argparse
import os
import sys

from graphopt.tools.bundle import Case, archive_bundle, download_ffi_wheel, make_bundle
from graphopt.errors import GraphoptError
from graphopt.files import temporary_directory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="the bundle folder to create")
    parser.add_argument("cases", nargs="+", metavar="MODEL:BATCH:TARGET[:PRECISION]",
                        help="e.g. resnet18:8:cuda, vgg16:1:cuda:sm_90, lenet5:1:cpu; a "
                             "precision (int8, float16, bfloat16) quantizes the model "
                             "(int8 calibrated on seeded probe inputs)")
    parser.add_argument("--ffi-wheel", action="append", default=[], metavar="WHEEL|auto",
                        help="apache-tvm-ffi wheel(s) to carry; 'auto' downloads the cp312 one")
    parser.add_argument("--python", default="3.12", help="Python version for --ffi-wheel auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", choices=("auto", "params", "embedded"), default="auto",
                        help="params: libraries hold code only; the runner rebuilds float32 "
                             "zoo weights and reads quantized ones from the bundle; embedded: "
                             "weights inside each library; auto (default): params for CUDA "
                             "cases, embedded for CPU ones (bfloat16 cases always embed theirs)")
    parser.add_argument("--max-mib", type=float, default=64.0,
                        help="size limit (default 64), of the archive with --archive")
    parser.add_argument("--archive", action="store_true",
                        help="also pack the bundle as FOLDER.tar.xz (what travels)")
    parser.add_argument("--keep-going", action="store_true",
                        help="bundle the cases that build; list the others and why")
    args = parser.parse_args()
    try:
        cases = [Case.parse(spec) for spec in args.cases]
        wheels = [w for w in args.ffi_wheel if w != "auto"]
        with temporary_directory("ffi-wheel-") as download:
            if "auto" in args.ffi_wheel:
                wheels.append(download_ffi_wheel(download, args.python))
            limit = float("inf") if args.archive else args.max_mib   # the archive's, below
            manifest = make_bundle(args.folder, cases, wheels=wheels, seed=args.seed,
                                   weights=args.weights, max_mib=limit,
                                   keep_going=args.keep_going,
                                   progress=lambda m: print(m, file=sys.stderr, flush=True))
        archive = archive_bundle(args.folder) if args.archive else None
        if archive and os.path.getsize(archive) / 2**20 > args.max_mib:
            raise GraphoptError(f"{archive} holds {os.path.getsize(archive) / 2**20:.1f} MiB, "
                                f"over the {args.max_mib:g} MiB limit; bundle fewer cases")
    except GraphoptError as e:
        print(f"make_bundle: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.folder}: {len(manifest['cases'])} cases, {manifest['mib']} MiB")
    if archive:
        print(f"{archive}: {os.path.getsize(archive) / 2**20:.2f} MiB")
    for failed in manifest["not_built"]:
        print(f"not built: {failed['case']}: {failed['error']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
