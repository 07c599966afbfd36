"""`convnn experiment`: list / run / status / report of grids of training runs (the paper's studies or your own)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional

DESCRIPTION = """\
Grids of training runs: the paper's studies (`convnn experiment list`) or a grid file of your own. Each cell is an
ordinary `convnn train` run in GRID_DIR/cells/<cell>/ (checkpoints, metrics, curves). A grid is resumable: run it
again and finished cells are skipped, interrupted cells resume from their checkpoint, failed cells are retried.
GRID_DIR is OUT_DIR/<grid>/<scale> (default OUT_DIR: experiments).
"""
EPILOG = """\
examples:
  convnn experiment list
  convnn experiment run vgg-branching --scale smoke                  # seconds per cell, on the embedded sample
  convnn experiment run vgg-branching --scale cpu --dataset cifar10 --data-dir DIR \\
      --where ratio=0.0,0.5,1.0 --where pe=Col/Col                   # 3 cells at the reduced CPU scale
  convnn experiment run vit-attention --scale paper --data-dir DIR --ray-address ray://HEAD:10001 --gpus-per-cell 1
  convnn experiment status vgg-branching --scale cpu
  convnn experiment report vgg-branching --scale cpu                 # Markdown, CSV, JSON and a plot
"""


def _key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    from ..train.config import parse_value

    key, value = text.split("=", 1)
    return key.strip(), parse_value(value)


def _where(text: str) -> tuple[str, set[str]]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not AXIS=LEVEL[,LEVEL...]")
    axis, labels = text.split("=", 1)
    return axis.strip(), {label.strip() for label in labels.split(",") if label.strip()}


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of ints") from err


def _add_location(p: argparse.ArgumentParser) -> None:
    p.add_argument("grid", help="a shipped grid's name (convnn experiment list), a grid .toml file, or a grid folder "
                                "(holding grid.json)")
    p.add_argument("--scale", default="cpu", help="smoke | cpu | paper (default cpu)")
    p.add_argument("--out-dir", default="experiments", help="parent of the grid folders (default experiments/)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `experiment` command and its subcommands."""
    p = sub.add_parser("experiment", help="grids of training runs (the paper's studies): list / run / status / report",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
    commands = p.add_subparsers(dest="experiment_command", metavar="{list,run,status,report}")

    ls = commands.add_parser("list", help="the shipped grids and scales (--cells GRID: a grid's cells)")
    ls.add_argument("--cells", metavar="GRID", help="list this grid's cells at --scale instead")
    ls.add_argument("--scale", default="cpu", help="the scale for --cells (default cpu)")
    ls.add_argument("--format", help="print the grid file format and exit", action="store_true")
    ls.set_defaults(func=cmd_list)

    run = commands.add_parser("run", help="run a grid's unfinished cells (in this process, or on Ray)",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_location(run)
    run.add_argument("--dataset", action="append", help="only this dataset (repeatable; default: the grid's)")
    run.add_argument("--seeds", type=_int_list, help="seeds, comma separated (default: the grid's)")
    run.add_argument("--where", action="append", type=_where, default=[], metavar="AXIS=LEVEL[,LEVEL]",
                     help="only the cells at these levels of an axis (repeatable)")
    run.add_argument("--set", dest="overrides", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                     help="a training option for every cell, as `convnn train --set` (e.g. epochs=3); applied last")
    run.add_argument("--backend", default="auto", help="the backend of every cell (default auto)")
    run.add_argument("--data-dir", help="folder holding the datasets (default $CONVNN_DATA, then ~/.cache/convnn/data)")
    run.add_argument("--threads", type=int, help="compute threads per cell (default: --cpus-per-cell on Ray, else the "
                                                 "library default)")
    run.add_argument("--ray", action="store_true", help="run the cells as tasks on a local Ray instance")
    run.add_argument("--ray-address", metavar="ADDR", help="submit the cells to an existing Ray cluster "
                                                          "(the grid folder must be on a shared file system)")
    run.add_argument("--cpus-per-cell", type=float, default=1.0, help="Ray: CPUs each cell asks for (default 1)")
    run.add_argument("--gpus-per-cell", type=float, default=0.0, help="Ray: GPUs each cell asks for (default 0)")
    run.add_argument("--ray-cpus", type=int, help="--ray: CPUs of the local instance (default: this machine's)")
    run.add_argument("--dry-run", action="store_true", help="check the grid and list its cells; train nothing")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    st = commands.add_parser("status", help="done / running / interrupted / failed / pending cells of a grid")
    _add_location(st)
    st.set_defaults(func=cmd_status)

    rep = commands.add_parser("report", help="the grid's table (Markdown, CSV, JSON) beside the paper's, and a plot")
    _add_location(rep)
    rep.add_argument("--no-plot", action="store_true", help="skip the PNG")
    rep.set_defaults(func=cmd_report)


# ----------------------------------------------------------------------------- helpers
def _open(args: argparse.Namespace) -> tuple[Any, Any]:
    """(Grid, GridFolder) for `grid` given as a name, a file, or a grid folder."""
    from .folder import GridFolder
    from .grid import load_grid, parse_grid
    from .scales import get_scale

    path = Path(args.grid)
    if path.is_dir() and (path / "grid.json").exists():
        folder = GridFolder(path)
        manifest = folder.read_manifest()
        return parse_grid(manifest["grid_file"], manifest["source"]), folder
    grid = load_grid(args.grid)
    scale = get_scale(args.scale)
    return grid, GridFolder(Path(args.out_dir) / grid.name / scale.name)


def _say(line: str) -> None:
    print(line, flush=True)


# ----------------------------------------------------------------------------- list
def cmd_list(args: argparse.Namespace) -> int:
    from .cells import expand
    from .grid import FORMAT, load_grid, packaged_grids
    from .scales import SCALES, get_scale

    if args.format:
        print(FORMAT)
        return 0
    if args.cells:
        grid = load_grid(args.cells)
        for cell in expand(grid, get_scale(args.scale)):
            print(cell.id)
        return 0
    print("grids:")
    for name, path in sorted(packaged_grids().items()):
        grid = load_grid(str(path))
        n = len(grid.coords()) * len(grid.datasets) * len(grid.seeds)
        print(f"  {name:<16} {n:>4} cells  {grid.title}")
    print("scales:")
    for scale in SCALES.values():
        print(f"  {scale.name:<8} {scale.about}")
    print("a grid file of your own: `convnn experiment list --format` shows the format")
    return 0


# ----------------------------------------------------------------------------- run
def cmd_run(args: argparse.Namespace) -> int:
    from .cells import check_cells, expand
    from .scales import get_scale

    grid, folder = _open(args)
    scale = get_scale(args.scale)
    if args.ray and args.ray_address:
        raise ValueError("--ray starts a local Ray instance and --ray-address joins a cluster: give one of them")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads {args.threads} must be >= 1")
    if args.cpus_per_cell <= 0 or args.gpus_per_cell < 0:
        raise ValueError(f"--cpus-per-cell {args.cpus_per_cell} must be > 0 and --gpus-per-cell "
                         f"{args.gpus_per_cell} >= 0")
    where = {}
    for axis, labels in args.where:
        where.setdefault(axis, set()).update(labels)
    cells = expand(grid, scale, datasets=args.dataset, seeds=args.seeds, where=where, overrides=dict(args.overrides))
    check_cells(cells)
    if args.dry_run:
        for cell in cells:
            print(f"{cell.id}: " + " ".join(f"{k}={v}" for k, v in cell.overrides.items()))
        print(f"{len(cells)} cells; grid folder {folder.root}")
        return 0
    folder.write_manifest(grid.name, scale.name, grid.source, cells, grid.raw)
    todo = [c for c in cells if not folder.finished(c)]
    _say(f"grid {grid.name} at scale {scale.name}: {len(cells)} cells, {len(cells) - len(todo)} already done, "
         f"{len(todo)} to run {'on Ray' if args.ray or args.ray_address else 'in this process'}; folder {folder.root}")
    outcome = _run(args, folder, todo)
    failed = [cid for cid, r in outcome.items() if r.get("state") == "failed"]
    _say(f"{len(outcome) - len(failed)} of {len(todo)} cells finished, {len(failed)} failed"
         + (f" ({', '.join(failed[:3])}{' ...' if len(failed) > 3 else ''}; reasons: convnn experiment status "
            f"{folder.root})" if failed else "") + f"; report: convnn experiment report {folder.root}")
    return 1 if failed else 0


def _run(args: argparse.Namespace, folder: Any, todo: list[Any]) -> dict[str, dict[str, Any]]:
    from .runner import GridInterrupted, run_in_process

    outcome: dict[str, dict[str, Any]] = {}
    bar = None
    if not args.no_progress and todo:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc="cells", unit="cell", dynamic_ncols=True, file=sys.stderr)
        except ImportError:
            bar = None
    t0 = time.time()

    def on_result(cell: Any, result: dict[str, Any]) -> None:
        outcome[cell.id] = result
        if result["state"] == "done":
            best = result.get("best_val_top1")
            what = "done" + ("" if best is None else f", best val top-1 {100 * best:.2f}%") + \
                (", resumed" if result.get("resumed") else "")
        else:
            what = f"FAILED: {result.get('error', '')}"
        line = f"[{len(outcome)}/{len(todo)}] {cell.id}: {what} ({result.get('seconds', 0.0):.0f} s)"
        if bar is not None:
            bar.write(line)
            bar.update(1)
        else:
            _say(line)

    ray_mode = args.ray or args.ray_address
    threads = args.threads if args.threads is not None else (max(1, int(args.cpus_per_cell)) if ray_mode else None)
    try:
        if ray_mode:
            from .ray_runner import run_on_ray

            run_on_ray(folder, todo, backend=args.backend, data_dir=args.data_dir, threads=threads,
                       cpus_per_cell=args.cpus_per_cell, gpus_per_cell=args.gpus_per_cell,
                       address=args.ray_address, local_cpus=args.ray_cpus, on_result=on_result)
        else:
            run_in_process(folder, todo, backend=args.backend, data_dir=args.data_dir, threads=threads,
                           on_result=on_result)
    except GridInterrupted as err:
        if bar is not None:
            bar.close()
        print(f"convnn experiment: {err}; run the same command again to continue the grid", file=sys.stderr)
        raise SystemExit(err.exit_code) from err
    finally:
        if bar is not None:
            bar.close()
    _say(f"{len(outcome)} cells in {time.time() - t0:.0f} s")
    return outcome


# ----------------------------------------------------------------------------- status
def cmd_status(args: argparse.Namespace) -> int:
    from .folder import STATES

    grid, folder = _open(args)
    cells = folder.cells()
    counts = dict.fromkeys(STATES, 0)
    for cell in cells:
        state, note = folder.state(cell)
        counts[state] += 1
        print(f"{state:<12} {cell.id}" + (f"  ({note})" if note else ""))
    print(f"{grid.name} ({folder.root}): " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
          + f" of {len(cells)} cells")
    return 0


# ----------------------------------------------------------------------------- report
def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    grid, folder = _open(args)
    paths = write_report(grid, folder, plot=not args.no_plot)
    print(paths["md"].read_text())
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


def main(argv: Optional[list[str]] = None) -> int:  # pragma: no cover - `convnn experiment` is the entry point
    from convnn.cli import main as convnn_main

    return convnn_main(["experiment", *(argv or sys.argv[1:])])
