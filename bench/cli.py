"""`convnn bench layer | model | sweep | readme`: argument parsing; each writes its reports into --out."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Optional

DEFAULT_OUT = "reports/bench"


def _csv(text: Optional[str]) -> Optional[list[str]]:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    return items or None


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backends", default=None,
                   help="comma-separated backends (default: every installed one; the numpy oracle only with --oracle)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu, or cuda for the backends whose plugin lists it (convnn info), with the torch baselines "
                        "on the GPU")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement, median reported (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (default 1; the first is reported)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for every library (default: all cores)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder for JSON, Markdown, PNG (default {DEFAULT_OUT})")
    p.add_argument("--oracle", action="store_true", help="also time the numpy oracle on full-size shapes")
    p.add_argument("--compile", choices=("auto", "always", "never"), default="auto",
                   help="wrap calls in the backend's compile (auto: where the backend compiles by default, "
                        "capabilities.compile_by_default)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement calls")
    p.add_argument("--quick", action="store_true", help="tiny shapes, one repeat: a smoke run in seconds")


def _common(args: argparse.Namespace) -> Any:
    from .context import CommonOptions

    _stop_on_sigterm()
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)
    return CommonOptions(backends=_csv(args.backends), device=args.device, repeats=repeats, warmup=args.warmup,
                         threads=args.threads, out=Path(args.out), oracle=args.oracle, compile=args.compile,
                         memory=not args.no_memory, quick=args.quick)


def _stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so a stopped run still writes the rows it measured."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass


def _finish(report: dict[str, Any], out: Path) -> int:
    from .report import MARKDOWN, write_report

    written = write_report(report, out)
    print(MARKDOWN[report["kind"]](report))
    for kind, path in written.items():
        print(f"wrote {kind}: {path}")
    ok = any(r.get("status") == "ok" for r in report["rows"])
    if report.get("interrupted"):
        print("interrupted: the report holds the rows measured so far", file=sys.stderr)
        return 130
    if not ok:
        print("no measurement succeeded; see the notes above", file=sys.stderr)
    return 0 if ok else 1


SKIP_IN_COMMAND = ("func", "bench_command", "command")


def _argv(args: argparse.Namespace) -> list[str]:
    """The subcommand and every option as parsed (defaults included), so the report says how to regenerate it."""
    out = [args.bench_command]
    for key, value in sorted(vars(args).items()):
        if key in SKIP_IN_COMMAND or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        out += [flag] if value is True else [flag, str(value)]
    return out


def _cmd_layer(args: argparse.Namespace) -> int:
    from .layer import run_layer_bench

    options = _common(args)
    shapes = "quick" if args.quick else args.shapes
    report = run_layer_bench(options, shapes=shapes, batch=args.batch, variants=_csv(args.variants), argv=_argv(args))
    return _finish(report, options.out)


def _cmd_model(args: argparse.Namespace) -> int:
    from .model import run_model_bench

    options = _common(args)
    report = run_model_bench(options, models=_csv(args.models), batch=args.batch, vgg_head=args.vgg_head,
                             argv=_argv(args))
    return _finish(report, options.out)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import run_sweep_bench

    options = _common(args)
    report = run_sweep_bench(options, axes=_csv(args.axes), batch=args.batch, backward=args.backward,
                             argv=_argv(args))
    return _finish(report, options.out)


def _cmd_readme(args: argparse.Namespace) -> int:
    from .readme import default_figures_path, run

    _stop_on_sigterm()
    if args.runs < 1:
        print(f"convnn bench readme: error: --runs={args.runs} must be at least 1 (3 or more for a spread)",
              file=sys.stderr)
        return 2
    if args.threads < 1:
        print(f"convnn bench readme: error: --threads={args.threads} must be at least 1", file=sys.stderr)
        return 2
    readme = None if args.no_readme else Path(args.readme)
    if readme is not None and not readme.exists():
        print(f"convnn bench readme: error: --readme {readme} does not exist (or pass --no-readme)", file=sys.stderr)
        return 2
    figures = None if args.no_figures else Path(args.figures) if args.figures else default_figures_path()
    return run(args.runs, args.threads, Path(args.out), readme, figures, backends=args.backends, quick=args.quick)


def _no_subcommand(bench: argparse.ArgumentParser) -> int:
    bench.print_help()
    print("convnn bench: error: choose what to benchmark: layer, model, sweep or readme; see convnn bench --help",
          file=sys.stderr)
    return 2


def register(subparsers: Any) -> None:
    """Add `bench` with its `layer`, `model` and `sweep` subcommands to the `convnn` parser."""
    bench = subparsers.add_parser("bench", help="benchmarks: layers, whole models, scaling sweeps (JSON, Markdown, PNG)")
    sub = bench.add_subparsers(dest="bench_command", metavar="WHAT")
    bench.set_defaults(func=lambda _args: _no_subcommand(bench))
    commands: list[tuple[str, str, Callable[[argparse.Namespace], int]]] = [
        ("layer", "every layer variant per backend on VGG-11 and ViT-Tiny shapes, against the authors' algorithm, "
                  "torch conv2d and SDPA", _cmd_layer),
        ("model", "training and inference images/s and peak memory of VGG-11 and ViT models per backend", _cmd_model),
        ("sweep", "time as N, K, C and the candidate count grow (all vs random sampling), with plots", _cmd_sweep),
    ]
    readme = sub.add_parser(
        "readme", help="the README's CPU speed tables: layer and model benchmarks over several runs, min/median/max",
        description="Runs the layer and the model benchmark --runs times (separate processes) and writes "
                    "min / median / max of each figure to OUT/cpu-speed.{md,json}, into the README between its "
                    "speed-table markers, and into the figures the auto backend policy ranks by "
                    "(convnn/cpu_figures.json). About 4 minutes a run on a 2-core machine.")
    readme.add_argument("--runs", type=int, default=3, help="separate runs of each benchmark (default 3)")
    readme.add_argument("--threads", type=int, default=2, help="CPU threads for every library (default 2)")
    readme.add_argument("--backends", default="numba,torch,jax", help="backends to measure (default numba,torch,jax)")
    readme.add_argument("--out", default="results", help="folder for cpu-speed.md and .json (default results)")
    readme.add_argument("--readme", default="README.md", help="the README to rewrite (default README.md)")
    readme.add_argument("--no-readme", action="store_true", help="leave the README alone")
    readme.add_argument("--figures", default=None,
                        help="where to write the auto policy's figures (default: the package's cpu_figures.json)")
    readme.add_argument("--no-figures", action="store_true", help="leave the auto policy's figures alone")
    readme.add_argument("--quick", action="store_true", help="tiny shapes, one repeat: a smoke run of the whole chain")
    readme.set_defaults(func=_cmd_readme)
    for name, help_text, func in commands:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_common(p)
        if name == "layer":
            p.add_argument("--shapes", choices=("quick", "default", "paper"), default="default",
                           help="quick: tiny; default: VGG-11 32x32 (feature selection only), 16x16, 8x8 and ViT "
                                "65/197 tokens; paper: every variant on VGG-11 32x32 ... 2x2 and ViT 65/197")
            p.add_argument("--batch", type=int, default=None, help="batch size (default 32)")
            p.add_argument("--variants", default=None,
                           help="comma-separated substrings of layer names to keep, e.g. 'feature/all,attention'")
        elif name == "model":
            p.add_argument("--models", default=None, help="comma-separated model labels (default: all)")
            p.add_argument("--batch", type=int, default=None, help="images per step (default 8 on cpu, 64 on cuda; quick 2)")
            p.add_argument("--vgg-head", choices=("paper", "light"), default=None,
                           help="VGG classifier: the paper's 4096-4096 MLP (119.6M parameters, default on cuda) or "
                                "global pooling + one linear (default on cpu, so the compared layers dominate)")
        else:
            p.add_argument("--axes", default=None, help="comma-separated axes among N,K,C,candidates (default all)")
            p.add_argument("--batch", type=int, default=None, help="batch size (default 4, quick 1)")
            p.add_argument("--backward", action="store_true", help="also time forward+backward")
        p.set_defaults(func=func)
