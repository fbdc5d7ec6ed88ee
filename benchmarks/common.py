"""What the subcommands share: progress lines, `--set` overrides, the task record, and
running tasks packed into stacked learners, in turn, in processes or as Ray tasks."""

import argparse
import ast
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from autoencoder import StreamingAutoEncoder
from methods import METHODS, parse_options
from model import ModelConfig
from stream import FrameStream, Schedule


class UsageError(ValueError):
    """Bad input to a subcommand: reported as one line, exit status 2."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def emit(result: dict, one_line: bool) -> None:
    """The subcommand's result on stdout: one JSON line (`--json`) or indented."""
    print(json.dumps(result) if one_line else json.dumps(result, indent=2))


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_overrides(pairs: list[str]) -> dict:
    """`key=value` pairs for ModelConfig (ablations), values parsed as Python literals."""
    overrides = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        overrides[key] = ast.literal_eval(value)
    return overrides


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="ModelConfig overrides")


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    """--methods and --method-option, for a subcommand whose tasks each run one method."""
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["none"],
        choices=list(METHODS),
        help="methods against forgetting and loss of plasticity (methods/), one row each",
    )
    add_method_option_argument(parser)


def add_method_option_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--method-option",
        nargs="*",
        default=[],
        action="extend",
        metavar="KEY=VALUE",
        help="a method hyper-parameter, given to every method named that has it",
    )


def method_options(methods: list[str], pairs: list[str]) -> dict[str, dict]:
    """Each method's options from KEY=VALUE pairs: a key goes to every method that has it;
    a key no listed method has is an error (ValueError)."""
    options = {method: {} for method in methods}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        takers = [m for m in methods if key in {f.name for f in fields(METHODS[m].Options)}]
        if not sep or not takers:
            raise UsageError(f"--method-option {pair!r}: no method of {', '.join(methods)} has an option {key!r}")
        for method in takers:
            options[method][key] = value
    try:
        return {method: asdict(parse_options(method, values)) for method, values in options.items()}
    except ValueError as error:
        raise UsageError(str(error)) from None


def add_pack_arguments(parser: argparse.ArgumentParser) -> None:
    """--streams, --jobs, --threads and --ray, for a subcommand that runs its tasks with `run_tasks`."""
    parser.add_argument(
        "--streams",
        type=positive_int,
        default=1,
        metavar="K",
        help="streams per stacked learner: tasks of one optimizer learn K at a time in one update",
    )
    parser.add_argument("--jobs", type=positive_int, default=1, help="stacked learners run in parallel processes")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=torch.get_num_threads(),
        help="torch threads per process (per Ray task with --ray)",
    )
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run the stacked learners as Ray tasks on the cluster at ADDRESS (auto, ray://host:port); "
        "alone: on a local cluster",
    )


@dataclass(frozen=True, kw_only=True)
class Task:
    """One stream to learn and report as one row: what its learner is built from, and where
    its row goes. Each subcommand adds the fields of its own streams."""

    id: int  # the row's place in the result
    optimizer: str
    seed: int
    lr: float | None
    overrides: dict  # ModelConfig fields
    threads: int
    method: str = "none"
    method_options: dict = field(default_factory=dict)
    bar_line: int = 0  # the line of its pack's progress bar

    def pack_key(self) -> str:
        """Tasks with equal keys can share one stacked learner."""
        return json.dumps([self.optimizer, self.lr, self.overrides, self.method, self.method_options], sort_keys=True)


def build_learner(tasks: list[Task]) -> StreamingAutoEncoder:
    """One learner for a pack of tasks, stream k seeded as a lone run of task k seeds it
    (one task: that lone learner itself)."""
    models = []
    for task in tasks:
        torch.manual_seed(task.seed)
        models.append(
            StreamingAutoEncoder(
                replace(ModelConfig(), **task.overrides),
                optimizer=task.optimizer,
                lr=task.lr,
                method=task.method,
                method_options=task.method_options,
            )
        )
    return StreamingAutoEncoder.stack(models)


def one_game(game: str, seed: int) -> FrameStream:
    """A frame source of one game for ever, its env seeded from (seed, step 0) as every benchmark's."""
    return FrameStream(Schedule((game,), switch_every=1), seed)


def packs(tasks: list[Task], streams: int) -> list[list[Task]]:
    """The tasks in groups of up to `streams` that one stacked learner can run (same
    optimizer, learning rate and model overrides), each group on a progress bar line of its own."""
    groups: dict[str, list[Task]] = {}
    for task in tasks:
        groups.setdefault(task.pack_key(), []).append(task)
    chunks = [group[i : i + streams] for group in groups.values() for i in range(0, len(group), streams)]
    return [[replace(task, bar_line=line) for task in chunk] for line, chunk in enumerate(chunks)]


def run_tasks(run, tasks: list[Task], args) -> list[dict]:
    """Every task's row, in the tasks' order: `run` takes a pack of tasks (`--streams` per
    pack) and returns their rows; packs run in turn, in `--jobs` processes, or as Ray tasks."""
    work = packs(tasks, args.streams)
    if args.ray is not None:
        done = run_on_ray(run, work, args.ray, tasks[0].threads)
    elif args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            done = list(pool.map(run, work))
    else:
        done = [run(pack) for pack in work]
    rows = {task.id: row for pack, pack_rows in zip(work, done) for task, row in zip(pack, pack_rows)}
    return [rows[task.id] for task in tasks]


def run_on_ray(run, work: list[list[Task]], address: str, threads: int) -> list[list[dict]]:
    """The packs as Ray tasks of `threads` CPUs each, on the cluster at `address` ("local":
    a cluster of this machine, started and stopped here). The code travels as the job's
    working directory; every node needs the project's dependencies installed."""
    # Ray would start workers through `uv run` when the driver was (without the ray extra); use this Python
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray
    except ImportError:
        raise SystemExit("bench.py: --ray needs Ray: uv sync --extra ray") from None
    here = Path(__file__).resolve().parent.parent
    ray.init(
        address=address,
        runtime_env={"working_dir": str(here), "excludes": [".venv", "runs", ".git"]},
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
    )
    try:
        remote = ray.remote(num_cpus=threads)(run)
        return ray.get([remote.remote(pack) for pack in work])
    finally:
        ray.shutdown()
