"""Benchmark every conv/pool backend against each other, the machine's matmul peak, and PyTorch /
TensorFlow; write reports/<name>/ (report.md, results.json, PNGs) and refresh reports/latest.md.

    python -m bench.compare                       # the full matrix (about 20 minutes on 2 cores)
    python -m bench.compare --quick               # reduced matrix, about 3 minutes (CI smoke test)
    python -m bench.compare --compare OLD.json    # run, then ratios against an earlier run
    python -m bench.compare --compare OLD.json NEW.json   # only compare two existing runs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kernels import BACKEND_NAMES
from kernels.memory import keep_freed_memory
from model.cli import HelpFormatter, Parser

from .cases import CASES, LEGACY_CASE_NAMES, QUICK_CASES
from .comparison import compare_results, load_results, render_comparison
from .context import Options
from .mnist import data_source
from .report import write_report
from .suite import resolve_options, run_suite

PROG = "python -m bench.compare"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "reports"


class _Formatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """model.cli's defaults in each option's help, and the module docstring's layout kept."""


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(prog=PROG, description=__doc__, formatter_class=_Formatter)
    p.add_argument(
        "--cases",
        nargs="+",
        metavar="CASE",
        help=f"layer cases to run (default: all; with --quick: {' '.join(QUICK_CASES)}). "
        f"Known: {', '.join(CASES)}",
    )
    p.add_argument(
        "--backends",
        nargs="+",
        metavar="BACKEND",
        help=f"backends to run (default: every available one). Known: {', '.join(BACKEND_NAMES)}",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="timed samples per measurement, after warm-up (default: 7; with --quick: 3)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="passes over the whole layer matrix, pooled into one median per figure so a "
        "busy moment spoils one round, not the result (default: 3; with --quick: 1)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="reduced matrix (3 cases, 2048-image epoch (512 for deep), 1000-image inference, "
        "short scaling, partial-epoch memory, no cold numba first run) in about 3 minutes",
    )
    p.add_argument(
        "--out",
        default=str(DEFAULT_OUT),
        help="directory that receives <name>/ and latest.md (default: %(default)s)",
    )
    p.add_argument(
        "--name",
        default=None,
        help="report directory name (default: the UTC date-time, e.g. 2026-11-23_040500)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="MNIST for the epoch benchmark (four IDX files or mnist.npz), found as `python -m "
        "model.train` finds it but never downloaded (default: $MNIST_DIR, else the user cache "
        "~/.cache/convbench/mnist or $CONVBENCH_CACHE; without any, random data of the same "
        "shape, and the run says so)",
    )
    p.add_argument(
        "--epoch-samples",
        type=int,
        default=None,
        help="images in the timed training epoch; times are scaled to 60000 and marked "
        "extrapolated when fewer (default: 60000; with --quick: 2048)",
    )
    p.add_argument(
        "--breakdown-backend",
        default=None,
        metavar="BACKEND",
        help="backend of the training-step breakdown (default: auto, else numba, else im2col, "
        "the first of them in --backends)",
    )
    p.add_argument(
        "--no-peers",
        action="store_true",
        help="skip PyTorch and TensorFlow (default: run them when installed)",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="JSON",
        help="OLD.json: run, then print and write ratios against that earlier "
        "results.json; OLD.json NEW.json: compare the two files only, without running. "
        "Renamed cases pair with their old names ("
        + ", ".join(f"{old} = {new}" for old, new in LEGACY_CASE_NAMES.items())
        + ")",
    )
    p.add_argument(
        "--regression-factor",
        type=float,
        default=1.5,
        help="with --compare, flag measurements slower than old by more than this factor "
        "(default: %(default)s)",
    )
    args = p.parse_args(argv)
    if args.compare and len(args.compare) > 2:
        p.error("--compare takes OLD.json or OLD.json NEW.json")
    if args.regression_factor <= 1:
        p.error(f"--regression-factor must be > 1, got {args.regression_factor}")
    return args


def comparison(old_path, new: dict, new_path: str, factor: float, out_dir: Path | None) -> str:
    old = load_results(old_path)
    rows = compare_results(old, new, factor)
    text = render_comparison(rows, old["name"], new["name"], factor)
    if out_dir is not None:
        (out_dir / "compare.md").write_text(text)
        (out_dir / "compare.json").write_text(
            json.dumps(
                {"old": str(old_path), "new": new_path, "regression_factor": factor, "rows": rows},
                indent=1,
            )
        )
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    keep_freed_memory()  # time the kernels as model.train runs them
    try:
        if args.compare and len(args.compare) == 2:
            new = load_results(args.compare[1])
            print(
                comparison(
                    args.compare[0],
                    new,
                    args.compare[1],
                    args.regression_factor,
                    Path(args.compare[1]).parent,
                )
            )
            return 0
        if args.compare:
            load_results(args.compare[0])  # fail before a long run, not after it
        opts = Options(
            cases=args.cases,
            backends=args.backends,
            quick=args.quick,
            repeat=args.repeat or (3 if args.quick else 7),
            rounds=args.rounds or (1 if args.quick else 3),
            peers=not args.no_peers,
            data_dir=args.data_dir,
            epoch_samples=args.epoch_samples,
            breakdown_backend=args.breakdown_backend,
        )
        opts = resolve_options(opts)  # unknown names fail here, before any timing
        if "epoch" in opts.sections:  # a named MNIST directory without the data fails here too
            print(f"epoch data: {data_source(opts.data_dir, opts.epoch_samples)}")
        results = run_suite(opts, name=args.name)
        out_dir = write_report(results, args.out)
        print(f"report: {out_dir / 'report.md'}  (also {Path(args.out) / 'latest.md'})")
        if args.compare:
            print(
                comparison(
                    args.compare[0],
                    results,
                    str(out_dir / "results.json"),
                    args.regression_factor,
                    out_dir,
                )
            )
        return 0
    except (ValueError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
