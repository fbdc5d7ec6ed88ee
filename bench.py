"""Benchmarks: speed, learning quality, continual learning and long-run memory.

    uv run bench.py speed [--device cpu|cuda] [--window] [--json]
    uv run bench.py quality --frames N [--games G ...] [--optimizers O ...] [--plot P] [--json]
    uv run bench.py rate --frames N [--games G ...] [--points C:B ...] [--plot P] [--json]
    uv run bench.py continual --games A B C --switch-every N --cycles C [--optimizers O ...] [--methods M ...]
                              [--seeds S ...]
    uv run bench.py soak --frames N [--json]

Progress goes to stderr; with --json the last line of stdout is one JSON object. Each
subcommand lives in a module of its own under benchmarks/.
"""

import argparse
import sys

from benchmarks import SUBCOMMANDS
from benchmarks.common import UsageError, emit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in SUBCOMMANDS.items():
        command = sub.add_parser(name, help=module.HELP)
        module.add_arguments(command)
        command.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    args = parser.parse_args()
    try:
        result = SUBCOMMANDS[args.command].run(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    emit(result, args.json)


if __name__ == "__main__":
    main()
