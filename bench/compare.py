"""Benchmark every conv/pool backend per layer case and both training epochs against PyTorch (and
TensorFlow), with the machine's matmul peak as the roofline; write <out>/<name>/ (report.md,
results.json, PNGs) and <out>/latest.md.

    python -m bench.compare               # every backend x layer case, both epochs, vs PyTorch
                                          # (5 minutes on a 2-vCPU AVX-512 Xeon)
    python -m bench.compare --quick       # 3 layer cases, short epoch rounds (2 minutes there;
                                          # CI's smoke test)
    python -m bench.compare --full        # every section, whole epochs (18 minutes there; the
                                          # committed runs: --full --out reports)
    python -m bench.compare --compare OLD.json            # run, then compare with OLD
    python -m bench.compare --compare OLD.json NEW.json   # compare two runs, no timing
    python -m bench.compare --compare OLD.json NEW.json --fail-on-regression 1.10  # a CI gate

Results go to bench-results/ (git-ignored) unless --out names another directory; reports/ only
with --out reports. Exit status: 0, 1 when --fail-on-regression finds a regression, 2 on bad
input (one line on stderr), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kernels import BACKEND_NAMES
from kernels.memory import keep_freed_memory
from model.cli import HelpFormatter, Parser

from . import epoch
from .cases import CASES, LEGACY_CASE_NAMES, QUICK_CASES
from .comparison import (
    compare_results,
    load_results,
    regressions,
    render_comparison,
    write_comparison,
)
from .context import Options
from .mnist import data_source
from .outdir import DEFAULT_OUT, rescue_results, writable_dir
from .report import write_report
from .sections import DEFAULT_SECTIONS, FULL_SECTIONS, OPT_IN_SECTIONS, SECTION_NAMES
from .suite import resolve_options, run_suite

PROG = "python -m bench.compare"
# Layer samples per round and rounds per mode: at least 5 samples per figure in the default run,
# the fewest on which bench.stats' Mann-Whitney test can call a change significant.
REPEAT = {"quick": 3, "default": 4, "full": 7}
ROUNDS = {"quick": 2, "default": 3, "full": 3}


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
        help=f"timed samples per layer measurement and round, after warm-up (default: "
        f"{REPEAT['default']}; --quick: {REPEAT['quick']}; --full: {REPEAT['full']})",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="passes over the whole layer matrix, each in another order; a figure is the median "
        "of all its rounds' samples and a ratio to PyTorch the median of the per-round ratios "
        f"(default: {ROUNDS['default']}; --quick: {ROUNDS['quick']}; --full: {ROUNDS['full']})",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        action="store_true",
        help=f"reduced matrix: layer cases {', '.join(QUICK_CASES)}, epochs in "
        f"{epoch.QUICK_ROUNDS} rounds of {epoch.QUICK_ROUND_BATCHES['small']} (small) and "
        f"{epoch.QUICK_ROUND_BATCHES['deep']} (deep) batches; 2 minutes on a 2-vCPU AVX-512 Xeon",
    )
    mode.add_argument(
        "--full",
        action="store_true",
        help="every section (breakdown, inference, memory, compile, scaling, ...), whole "
        "60 000-image epochs with their test accuracy, 7 x 3 layer samples; 18 minutes on a 2-vCPU AVX-512 Xeon",
    )
    p.add_argument(
        "--sections",
        nargs="+",
        metavar="SECTION",
        help=f"the sections to run, or 'all' (default: {' '.join(DEFAULT_SECTIONS)}; --full and "
        f"'all': every one but {', '.join(OPT_IN_SECTIONS)}, which runs only when named: "
        f"minutes per network set). Known: {', '.join(SECTION_NAMES)}",
    )
    p.add_argument(
        "--out",
        default=None,
        help="directory that receives <name>/ and latest.md, checked before anything is timed "
        f"(default: {DEFAULT_OUT.name}/ at the checkout's root, git-ignored; the committed runs "
        "are made with --out reports). With --compare OLD NEW: where the comparison goes "
        "(default: NEW's directory)",
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
        help="OLD.json: run, then compare with that earlier results.json; OLD.json NEW.json: "
        "compare the two files only, without running. Each figure is marked faster / slower / "
        "unchanged by a Mann-Whitney U test on its raw samples and its ratio printed with an "
        "interval; written as compare-<OLD's name>.md/.json into --out (default: the new run's "
        "directory). Renamed cases pair with their old names ("
        + ", ".join(f"{old} = {new}" for old, new in LEGACY_CASE_NAMES.items())
        + ")",
    )
    p.add_argument(
        "--fail-on-regression",
        type=float,
        default=None,
        metavar="FACTOR",
        help="with --compare, exit 1 when any of our figures is significantly slower than FACTOR "
        "times the old one (e.g. 1.10) and PyTorch did not slow as much in the same runs "
        "(default: no gate)",
    )
    args = p.parse_args(argv)
    if args.compare and len(args.compare) > 2:
        p.error("--compare takes OLD.json or OLD.json NEW.json")
    if args.fail_on_regression is not None and not args.compare:
        p.error("--fail-on-regression needs --compare")
    if args.fail_on_regression is not None and args.fail_on_regression < 1:
        p.error(f"--fail-on-regression must be >= 1, got {args.fail_on_regression}")
    return args


def comparison(old_path, new: dict, new_path, fail_factor: float | None, out_dir: Path) -> bool:
    """Compare `new` (read from or written to new_path) with the results at old_path, print it
    and write it as out_dir/compare-<old name>.{md,json}; True when the gate (fail_factor) fails."""
    old = load_results(old_path)
    rows = compare_results(old, new, fail_factor)
    text = render_comparison(rows, old["name"], new["name"], fail_factor)
    print(text)
    record = {"old": str(old_path), "new": str(new_path), "fail_on_regression": fail_factor}
    md, js, replaced = write_comparison(out_dir, old["name"], text, record, rows)
    print(f"comparison written to {md} and {js}" + (f" ({replaced})" if replaced else ""))
    return bool(regressions(rows))


def sections_option(names: list[str] | None) -> tuple[str, ...] | None:
    """--sections as Options takes it: None (the mode's default), 'all' (every section but the
    opt-in ones), or the names given."""
    if not names:
        return None
    return FULL_SECTIONS if names == ["all"] else tuple(names)


def main(argv=None) -> int:
    args = parse_args(argv)
    keep_freed_memory()  # time the kernels as model.train runs them
    try:
        if args.compare and len(args.compare) == 2:
            old_path, new_path = args.compare
            load_results(old_path)  # a bad OLD fails before NEW's directory is checked
            new = load_results(new_path)
            out = writable_dir(args.out or Path(new_path).parent)
            return int(comparison(old_path, new, new_path, args.fail_on_regression, out))
        if args.compare:
            load_results(args.compare[0])  # fail before a long run, not after it
        out_root = writable_dir(args.out or DEFAULT_OUT)  # before any timing
        mode = "quick" if args.quick else "full" if args.full else "default"
        opts = Options(
            cases=args.cases,
            backends=args.backends,
            quick=args.quick,
            full=args.full,
            sections=sections_option(args.sections),
            repeat=args.repeat or REPEAT[mode],
            rounds=args.rounds or ROUNDS[mode],
            peers=not args.no_peers,
            data_dir=args.data_dir,
            epoch_samples=args.epoch_samples,
            breakdown_backend=args.breakdown_backend,
        )
        opts = resolve_options(opts)  # unknown names fail here, before any timing
        if "epoch" in opts.sections:  # a named MNIST directory without the data fails here too
            print(f"epoch data: {data_source(opts.data_dir, epoch.images(opts))}")
        results = run_suite(opts, name=args.name)
        try:
            out_dir = write_report(results, out_root)
        except OSError as exc:
            saved = rescue_results(results)
            raise OSError(
                f"could not write the report into {out_root} ({exc.strerror or exc}); "
                f"the measurements are saved in {saved}"
            ) from None
        print(f"report: {out_dir / 'report.md'}  (also {out_root / 'latest.md'})")
        if args.compare:
            results_path = out_dir / "results.json"
            return int(
                comparison(args.compare[0], results, results_path, args.fail_on_regression, out_dir)
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
