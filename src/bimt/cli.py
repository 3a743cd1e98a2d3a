"""The ``bimt`` command: train, plot, view, analyze, reproduce, bench, tasks.

torch, scipy and matplotlib are imported inside the commands, never at the top, so that
``bimt --help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["main"]

from .training.config import SETTINGS, check_seed, default_of


class _LazyChoices:
    """Valid values read from a module attribute on first use (that module imports torch)."""

    def __init__(self, module: str, attr: str):
        self.module, self.attr = module, attr

    def _values(self):
        import importlib

        values = getattr(importlib.import_module(f"bimt.{self.module}"), self.attr)
        return list(values() if callable(values) else values)

    def __contains__(self, value):
        return value in self._values()

    def __iter__(self):
        return iter(sorted(self._values()) if self.attr == "TASKS" else self._values())


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` where an option has a default worth showing."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)

    def _expand_help(self, action):
        if isinstance(action.choices, _LazyChoices):  # the help text names them; no import
            import copy

            action = copy.copy(action)
            action.choices = None
        return super()._expand_help(action)


class _Parser(argparse.ArgumentParser):
    """argparse that lists the valid choices when a value is not one of them (exit code 2)."""

    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", _Help)
        super().__init__(*args, **kw)

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _lambda_arg(text: str):
    """``0.01`` (constant) or ``1e-3:5000,1e-2:10000,1e-3:5000`` (phases of value:steps); the
    values are checked where every config is (bimt.training.config)."""
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


def _seed_arg(text: str) -> int:
    """An integer; its range is checked with every config (bimt.training.config)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: give an integer") from None


def _seeds_arg(text: str) -> list[int]:
    """Seed numbers, as ``train --seed`` takes them: ``0-4`` (0 to 4), ``0,3,7`` or ``2``."""
    seeds = []
    try:
        for part in text.split(","):
            lo, dash, hi = part.strip().partition("-")
            first, last = int(lo), int(hi) if dash else int(lo)
            if last < first:
                raise ValueError
            seeds += range(first, last + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid seeds {text!r}: give seed numbers as 0-4, 0,1,2 or 3 (--n-seeds N for a count)"
        ) from None
    try:
        return sorted({check_seed(s) for s in seeds})  # the one range check, bimt.training.config
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


DEVICE_HELP = "cpu, cuda, cuda:N or auto; under torchrun each rank uses its own GPU (default: cpu)"


def _flag(s) -> str:
    return "--" + (s.flag or s.name).replace("_", "-")


def _list_arg(kind):
    def parse(text: str) -> list:
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid list {text!r}: give values separated by "
                                             "commas (4,20,20,2)") from None
    return parse


#: How the command line reads each kind of setting (the declarations in bimt.training.config).
_PARSERS = {"int": int, "float": float, "str": str, "list[int]": _list_arg(int),
            "list[str]": _list_arg(str)}


def _add_settings(parser) -> None:
    """One option per declared setting: its flag, parser, choices and help come from the
    declaration (bimt.training.config.SETTINGS), its default from the task unless it is set."""
    for s in SETTINGS:
        default = default_of(s.name)
        fallback = "" if default is None else f", else {_short(default)}"
        kw = dict(dest=s.name, help=f"{s.help} (default: the task's{fallback})")
        if s.type == "bool":
            kw.update(action="store_true", default=None)
        else:
            kw.update(type=_PARSERS.get(s.type), metavar=s.name.upper())
        if s.name == "seed":
            kw["type"] = _seed_arg
        elif s.name == "lambda_schedule":
            kw["type"] = _lambda_arg
        elif s.name == "lambda_milestones":
            kw["type"] = _milestones_arg
        if s.choices is not None:
            kw.update(choices=_Allowed(s), metavar=s.name.upper())
        parser.add_argument(_flag(s), **kw)


class _Allowed(_LazyChoices):
    """A declared setting's allowed values (read when first asked: some import torch)."""

    def __init__(self, setting):
        self.setting = setting

    def _values(self):
        return list(self.setting.allowed())

    def __iter__(self):
        return iter(self._values())


def _build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = _Parser(prog="bimt", description="Brain-Inspired Modular Training")
    p.add_argument("--version", action="version", version=f"bimt {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p.subcommands = sub.choices

    sub.add_parser("tasks", help="list the built-in tasks and their defaults")

    t = sub.add_parser("train", help="train a network on a task with BIMT (or an ablation)")
    t.add_argument("task", choices=_LazyChoices("tasks", "TASKS"), metavar="TASK",
                   help="a built-in task; bimt tasks lists them with their defaults")
    _add_settings(t)
    t.add_argument("--out", help="run directory (default: runs/TASK-METHOD-sSEED)")
    t.add_argument("--config", help="a config.json to start from; command-line options win "
                   "(default: none)")
    t.add_argument("--tensorboard", metavar="DIR",
                   help="also log scalars and the graph for TensorBoard in DIR (default: off)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--force", action="store_true",
                   help="replace what --out holds (another run, or files that are not a run's)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--device", metavar="DEVICE", help=DEVICE_HELP)

    pl = sub.add_parser("plot", help="redraw a run's figures")
    pl.add_argument("run_dir")

    v = sub.add_parser("view", help="write RUN/report.html, an interactive page of the network")
    v.add_argument("run_dir")
    v.add_argument("--open", action="store_true", help="open it in a web browser")

    a = sub.add_parser("analyze", help="modularity, modules and active neurons of a run")
    a.add_argument("run_dir")
    a.add_argument("--prune", action="store_true", help="add the pruning frontier plot")
    a.add_argument("--knockout", action="store_true", help="add the module knock-out table")
    a.add_argument("--circuit", action="store_true",
                   help="name the heads and MLP neurons that carry the task (language tasks): "
                        "circuit.json, circuit.png")

    r = sub.add_parser("reproduce", help="the paper's Tables 1 and 2, in parallel")
    r.add_argument("--tasks", help="comma-separated task names (default: the paper's tasks)")
    r.add_argument("--methods", default="vanilla,l1,bimt", help="comma-separated methods")
    seeds = r.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=_seeds_arg,
                       help="seed numbers, as train --seed: 0-4, 0,1,2 or 3 (default: 0-4)")
    seeds.add_argument("--n-seeds", type=int, help="a count: seeds 0 to N-1 (default: 5)")
    r.add_argument("--steps", type=int, help="override every task's steps, for a quick look "
                   "(default: the tasks')")
    r.add_argument("--workers", type=int, default=2, help="parallel processes")
    r.add_argument("--out", default="reproduction", help="output directory")
    r.add_argument("--data-dir", help="MNIST files (default: the built-in subset)")
    r.add_argument("--backend", choices=_LazyChoices("experiments.reproduce", "BACKENDS"), metavar="BACKEND",
                   default="batched",
                   help="batched: all runs of an MLP task as one stacked model; "
                        "processes: one run per worker")
    r.add_argument("--device", metavar="DEVICE", help=DEVICE_HELP)

    w = sub.add_parser("sweep", help="a grid of settings x seeds: table and Pareto plot")
    w.add_argument("task", choices=_LazyChoices("tasks", "TASKS"), metavar="TASK",
                   help="a built-in task; bimt tasks lists them")
    w.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2",
                   help="a TrainConfig field and its values (repeat: --grid A=0.5,1 --grid lambda=1e-3,1e-2)")
    w.add_argument("--seeds", type=_seeds_arg, default=[0],
                   help="seed numbers, as train --seed: 0-4, 0,1,2 or 3 (default: 0)")
    w.add_argument("--steps", type=int, help="training steps (default: the task's)")
    w.add_argument("--objective", default="modularity",
                   help="test_loss | test_acc | modularity | connection_cost | train_loss")
    w.add_argument("--minimize", action="store_true", help="minimise the objective (default: maximise)")
    w.add_argument("--constraint", help="e.g. test_loss<=0.01: trials that break it are infeasible (default: none)")
    w.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: stacked runs in this process; ray: Ray Tune")
    w.add_argument("--address", help="an existing Ray cluster, ray backend (default: a local Ray)")
    w.add_argument("--out", default="sweep", help="output directory")
    w.add_argument("--quiet", action="store_true", help="no progress bar")

    b = sub.add_parser("bench", help="time swap passes and training steps")
    b.add_argument("--json", action="store_true", help="one JSON object on the last line")
    b.add_argument("--device", metavar="DEVICE", help=DEVICE_HELP)
    b.add_argument("--batched-seeds", type=int, default=5, help="seeds in the batched timing")
    b.add_argument("--batched-steps", type=int, default=2000, help="steps in the batched timing")
    b.add_argument("--no-gpt", dest="gpt", action="store_false",
                   help="skip the GPT-2-small-shaped passes and GPT step (they take minutes)")
    return p


def main(argv=None) -> int:
    parser = _build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # the subcommand's own usage lists its valid options
        parser.subcommands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return _COMMANDS[args.command](args) or 0
    except BrokenPipeError:  # `bimt tasks | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, KeyError, OSError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        message = " ".join(str(message).split())  # one line
        print(f"bimt {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bimt {args.command}: interrupted", file=sys.stderr)
        return 130


def _run_dir(path: str) -> Path:
    run = Path(path)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {path} does not exist")
    return run


def _tasks(args) -> int:
    from .tasks import TASKS

    width = max(map(len, TASKS))
    for name, task in TASKS.items():
        print(f"{name:<{width}}  {task.description}")
        defaults = ", ".join(f"{k}={_short(v)}" for k, v in task.defaults.items())
        print(f"{'':<{width}}  defaults: {defaults}")
    return 0


def _short(value) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= 80 else text[:77] + "..."


def _train(args) -> int:
    from .training.config import TrainConfig, read_config_file

    given = [s.name for s in SETTINGS if getattr(args, s.name) is not None]
    if args.resume:
        if given or args.config:
            flags = [_flag(s) for s in SETTINGS if s.name in given] + (["--config"] if args.config else [])
            raise ValueError(f"--resume continues the run in --out with its saved config; drop "
                             f"{', '.join(flags)}")
        if not args.out:
            raise ValueError("--resume needs --out, the run directory to continue")
    base = read_config_file(args.config) if args.config else {}
    TrainConfig.from_dict(base)  # the file as written, before options override it
    base["task"] = args.task
    base.update({k: getattr(args, k) for k in given})
    config = TrainConfig.from_dict(base)
    named = config.resolved()  # the method and seed the run will use, for its directory's name
    out = args.out or f"runs/{named.task}-{named.method}-s{named.seed}"
    from .training.distributed import init_from_env, is_main

    init_from_env(args.device)  # under torchrun: data-parallel over its ranks
    extra = {"tensorboard": args.tensorboard} if args.tensorboard else {}
    from .training.loop import TrainingDiverged, fit

    try:
        result = fit(config, out=out, resume=args.resume, progress=not args.quiet and is_main(),
                     force=args.force, device=args.device, **extra)
    except TrainingDiverged as e:
        print(f"bimt train: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if (Path(out) / "checkpoint.pt").exists():
            how = (f"`bimt train {config.task} --out {out} --resume` continues the run from its "
                   "last checkpoint")
        else:
            how = "no checkpoint was written yet, so the run starts over when run again"
        print(f"\nbimt train: interrupted; {how}", file=sys.stderr)
        return 130
    if not is_main():
        return 0
    m = result.metrics
    print(_metrics_line(m))
    written = sorted(p.name for p in Path(out).iterdir() if p.is_file() and not p.name.startswith("."))
    print(f"wrote {out}/: {' '.join(written)}")
    return 0


def _metrics_line(m: dict) -> str:
    acc = f", test acc {m['test_acc']:.4f}" if m.get("test_acc") is not None else ""
    return (f"{m['task']} [{m['method']}, seed {m['seed']}]: test loss {m['test_loss']:.4g}{acc}, "
            f"modularity {m['modularity']:.3f}, cost {m['connection_cost']:.4g}, "
            f"{m['wall_s']:.1f} s ({m['data_source']})")


def _plot(args) -> int:
    from .training.loop import TrainResult
    from .training.runs import MODULE_TASK, load_model, read_run, write_plots

    model, cfg = load_model(_run_dir(args.run_dir))
    _, state = read_run(args.run_dir)
    data = None if cfg.task == MODULE_TASK else get_task_data(cfg)
    written = write_plots(TrainResult(model, {}, state["history"], cfg, data, Path(args.run_dir),
                                      state.get("snapshots", [])), progress=True)
    print(f"wrote {args.run_dir}/: {', '.join(written) or 'nothing (see the warnings above)'}")
    return 0


def get_task_data(cfg):
    from .tasks import get_task

    return get_task(cfg.task).make_data(cfg.seed, cfg.data_dir)


def _analyze(args) -> int:
    from .training.runs import analyze_run

    analyze_run(_run_dir(args.run_dir), prune=args.prune, knockout=args.knockout,
                circuit=args.circuit)
    return 0


def _view(args) -> int:
    from .training.view import write_report

    path = write_report(_run_dir(args.run_dir))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    if args.open:
        import webbrowser

        if not webbrowser.open(path.resolve().as_uri()):
            print(f"could not start a web browser; open {path} yourself", file=sys.stderr)
    return 0


def _reproduce(args) -> int:
    from .experiments.reproduce import reproduce

    reproduce(
        tasks=args.tasks.split(",") if args.tasks else None,
        methods=args.methods.split(","),
        seeds=args.seeds if args.seeds is not None else (args.n_seeds if args.n_seeds is not None else 5),
        workers=args.workers,
        out=args.out, steps=args.steps, data_dir=args.data_dir, backend=args.backend,
        device=args.device,
    )
    return 0


def _bench(args) -> int:
    from .experiments.bench import run_benchmarks

    if args.batched_seeds <= 0 or args.batched_steps <= 0:
        raise ValueError("--batched-seeds and --batched-steps must be positive, got "
                         f"{args.batched_seeds} and {args.batched_steps}")
    run_benchmarks(as_json=args.json, device=args.device, gpt=args.gpt, batched_seeds=args.batched_seeds,
                   batched_steps=args.batched_steps)
    return 0


def _sweep(args) -> int:
    from .experiments.sweep import parse_grid, sweep

    seeds = args.seeds
    fixed = {} if args.steps is None else {"steps": args.steps}
    rows = sweep(args.task, parse_grid(args.grid), seeds, objective=args.objective,
                 maximize=not args.minimize, constraint=args.constraint, backend=args.backend,
                 address=args.address, out=args.out, progress=not args.quiet, **fixed)
    print(Path(args.out, "sweep.md").read_text())
    print(f"wrote {args.out}/: sweep.csv sweep.md sweep.json pareto.png ({len(rows)} trials)")
    return 0


_COMMANDS = {"tasks": _tasks, "train": _train, "plot": _plot, "view": _view, "analyze": _analyze,
             "reproduce": _reproduce, "bench": _bench, "sweep": _sweep}

if __name__ == "__main__":
    sys.exit(main())
