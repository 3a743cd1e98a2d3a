"""The ``bimt`` command: train, plot, analyze, reproduce, bench, tasks."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse that lists the valid choices when a value is not one of them (exit code 2)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _lambda_arg(text: str):
    """``0.01`` (constant) or ``1e-3:5000,1e-2:10000,1e-3:5000`` (phases of value:steps)."""
    phases = []
    try:
        for part in text.split(","):
            value, _, steps = part.partition(":")
            phases.append([float(value), float(steps) if steps else 1.0])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid lambda {text!r}: give a number (0.01) or phases value:steps,... "
            "(1e-3:5000,1e-2:10000,1e-3:5000)"
        ) from None
    return phases


def _milestones_arg(text: str):
    """``0.25:10,0.75:0.1``: times 10 from a quarter of the run, times 0.1 from three quarters."""
    try:
        return [[float(a), float(b)] for a, b in (part.split(":") for part in text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid milestones {text!r}: give fraction:factor,... (0.25:10,0.75:0.1)"
        ) from None


def _build_parser() -> argparse.ArgumentParser:
    from .tasks import TASKS
    from .train import METHODS
    from .devices import DEVICE_CHOICES
    from .reproduce import BACKENDS
    from .swap import swap_modes

    p = _Parser(prog="bimt", description="Brain-Inspired Modular Training")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p.subcommands = sub.choices

    sub.add_parser("tasks", help="list the built-in tasks")

    t = sub.add_parser("train", help="train a network on a task with BIMT (or an ablation)")
    t.add_argument("task", choices=sorted(TASKS), metavar="TASK",
                   help=f"one of: {', '.join(TASKS)}")
    t.add_argument("--method", choices=METHODS, help="vanilla | l1 | l1-local | l1-swap | bimt (default)")
    t.add_argument("--seed", type=int)
    t.add_argument("--steps", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lambda", dest="lambda_schedule", type=_lambda_arg,
                   help="constant (0.01) or phases value:steps,... rescaled to --steps")
    t.add_argument("--lambda-milestones", dest="lambda_milestones", type=_milestones_arg,
                   help="multiply lambda at fractions of the run: 0.25:10,0.75:0.1")
    t.add_argument("--A", type=float, help="in-layer scale (locality)")
    t.add_argument("--y-star", type=float, help="layer gap")
    t.add_argument("--p", type=float, help="distance norm (1 = L1, 2 = L2)")
    t.add_argument("--top-k", type=int)
    t.add_argument("--swap-every", type=int)
    t.add_argument("--swap-mode", choices=swap_modes())
    t.add_argument("--eval-every", type=int)
    t.add_argument("--dtype", choices=("float32", "float64"), help="float64 as some notebooks train")
    t.add_argument("--data-dir", help="MNIST IDX files (or a torchvision MNIST folder)")
    t.add_argument("--out", help="run directory (default: runs/TASK-METHOD-sSEED)")
    t.add_argument("--config", help="a config.json to start from (command-line options win)")
    t.add_argument("--animate", action="store_true", default=None, help="also write evolution.gif")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--device", choices=DEVICE_CHOICES,
                   help="cpu (default), cuda or auto; under torchrun each rank uses its own GPU")

    pl = sub.add_parser("plot", help="redraw a run's figures")
    pl.add_argument("run_dir")

    a = sub.add_parser("analyze", help="modularity, modules and active neurons of a run")
    a.add_argument("run_dir")
    a.add_argument("--prune", action="store_true", help="add the pruning frontier plot")
    a.add_argument("--knockout", action="store_true", help="add the module knock-out table")

    r = sub.add_parser("reproduce", help="the paper's Tables 1 and 2, in parallel")
    r.add_argument("--tasks", help="comma-separated task names (default: the paper's tasks)")
    r.add_argument("--methods", default="vanilla,l1,bimt")
    r.add_argument("--seeds", type=int, default=5)
    r.add_argument("--steps", type=int, help="override every task's steps (for a quick look)")
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--out", default="reproduction")
    r.add_argument("--data-dir")
    r.add_argument("--backend", choices=BACKENDS, default="batched",
                   help="batched (default): all runs of an MLP task as one stacked model; "
                        "processes: one run per worker")
    r.add_argument("--device", choices=DEVICE_CHOICES)

    w = sub.add_parser("sweep", help="a grid of settings x seeds: table and Pareto plot")
    w.add_argument("task", choices=sorted(TASKS), metavar="TASK", help=f"one of: {', '.join(TASKS)}")
    w.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2",
                   help="a TrainConfig field and its values (repeat: A=0.5,1 --grid lambda=1e-3,1e-2)")
    w.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    w.add_argument("--steps", type=int)
    w.add_argument("--objective", default="modularity",
                   help="test_loss | test_acc | modularity | connection_cost | train_loss")
    w.add_argument("--minimize", action="store_true", help="minimise the objective (default: maximise)")
    w.add_argument("--constraint", help="e.g. test_loss<=0.01: trials that break it are infeasible")
    w.add_argument("--backend", choices=("local", "ray"), default="local")
    w.add_argument("--address", help="an existing Ray cluster (ray backend)")
    w.add_argument("--out", default="sweep")
    w.add_argument("--quiet", action="store_true")

    b = sub.add_parser("bench", help="time swap passes and training steps")
    b.add_argument("--json", action="store_true", help="one JSON object on the last line")
    b.add_argument("--device", choices=DEVICE_CHOICES)
    b.add_argument("--batched-seeds", type=int, default=5, help="seeds in the batched timing")
    b.add_argument("--batched-steps", type=int, default=2000, help="steps in the batched timing")
    return p


def main(argv=None) -> int:
    parser = _build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # the subcommand's own usage lists its valid options
        parser.subcommands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return _COMMANDS[args.command](args) or 0
    except (ValueError, KeyError, OSError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"bimt {args.command}: error: {message}", file=sys.stderr)
        return 2


def _tasks(args) -> int:
    from .tasks import TASKS

    width = max(map(len, TASKS))
    for name, task in TASKS.items():
        print(f"{name:<{width}}  {task.description}")
    return 0


def _train(args) -> int:
    from .train import TrainConfig, TrainingDiverged, train

    options = ("method", "seed", "steps", "lr", "batch_size", "lambda_schedule", "lambda_milestones",
               "A", "y_star", "p", "top_k", "swap_every", "swap_mode", "eval_every", "data_dir",
               "animate", "dtype")
    if args.resume:
        given = [k for k in options if getattr(args, k) is not None] + (["config"] if args.config else [])
        if given:
            raise ValueError(
                f"--resume continues the run in --out with its saved config; drop "
                f"{', '.join('--' + k.replace('_', '-') for k in given)}"
            )
        if not args.out:
            raise ValueError("--resume needs --out, the run directory to continue")
    base = {}
    if args.config:
        base = json.loads(Path(args.config).read_text())
    base["task"] = args.task
    for key in options:
        value = getattr(args, key)
        if value is not None:
            base[key] = value
    config = TrainConfig.from_dict(base)
    out = args.out or f"runs/{config.task}-{config.method}-s{config.seed}"
    from .distributed import init_from_env, is_main

    init_from_env(args.device)  # under torchrun: data-parallel over its ranks
    try:
        result = train(config, out=out, resume=args.resume, progress=not args.quiet and is_main(),
                       device=args.device)
    except TrainingDiverged as e:
        print(f"bimt train: {e}", file=sys.stderr)
        return 1
    if not is_main():
        return 0
    m = result.metrics
    print(_metrics_line(m))
    print(f"wrote {out}/: config.json metrics.json history.csv checkpoint.pt graph.png graph.svg"
          + (" evolution.gif" if result.config.animate else ""))
    return 0


def _metrics_line(m: dict) -> str:
    acc = f", test acc {m['test_acc']:.4f}" if m.get("test_acc") is not None else ""
    return (f"{m['task']} [{m['method']}, seed {m['seed']}]: test loss {m['test_loss']:.4g}{acc}, "
            f"modularity {m['modularity']:.3f}, cost {m['connection_cost']:.4g}, "
            f"{m['wall_s']:.1f} s ({m['data_source']})")


def _plot(args) -> int:
    from .runs import MODULE_TASK, load_checkpoint, load_model, write_plots
    from .tasks import get_task
    from .train import TrainResult

    model, cfg = load_model(args.run_dir)
    state = load_checkpoint(Path(args.run_dir) / "checkpoint.pt")
    data = None if cfg.task == MODULE_TASK else get_task(cfg.task).make_data(cfg.seed, cfg.data_dir)
    write_plots(TrainResult(model, {}, state["history"], cfg, data, Path(args.run_dir),
                            state.get("snapshots", [])))
    print(f"wrote figures in {args.run_dir}")
    return 0


def _analyze(args) -> int:
    from .runs import analyze_run

    analyze_run(args.run_dir, prune=args.prune, knockout=args.knockout)
    return 0


def _reproduce(args) -> int:
    from .reproduce import reproduce

    reproduce(
        tasks=args.tasks.split(",") if args.tasks else None,
        methods=args.methods.split(","), seeds=args.seeds, workers=args.workers,
        out=args.out, steps=args.steps, data_dir=args.data_dir, backend=args.backend,
        device=args.device,
    )
    return 0


def _bench(args) -> int:
    from .bench import run_benchmarks

    if args.batched_seeds <= 0 or args.batched_steps <= 0:
        raise ValueError("--batched-seeds and --batched-steps must be positive, got "
                         f"{args.batched_seeds} and {args.batched_steps}")
    run_benchmarks(as_json=args.json, device=args.device, batched_seeds=args.batched_seeds,
                   batched_steps=args.batched_steps)
    return 0


def _sweep(args) -> int:
    from .sweep import parse_grid, sweep

    try:
        seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r}: give comma-separated integers (0,1,2)") from None
    fixed = {} if args.steps is None else {"steps": args.steps}
    rows = sweep(args.task, parse_grid(args.grid), seeds, objective=args.objective,
                 maximize=not args.minimize, constraint=args.constraint, backend=args.backend,
                 address=args.address, out=args.out, progress=not args.quiet, **fixed)
    print(Path(args.out, "sweep.md").read_text())
    print(f"wrote {args.out}/: sweep.csv sweep.md sweep.json pareto.png ({len(rows)} trials)")
    return 0


_COMMANDS = {"tasks": _tasks, "train": _train, "plot": _plot, "analyze": _analyze,
             "reproduce": _reproduce, "bench": _bench,
             "sweep": _sweep}

if __name__ == "__main__":
    sys.exit(main())
