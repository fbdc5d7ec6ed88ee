"""The subcommands of `bench.py`, one module each.

A subcommand module names itself (`NAME`, `HELP`), adds its own arguments
(`add_arguments(parser)`) and returns its result as a dict (`run(args)`); a plot of it,
where it has one, is its `plot`. `SUBCOMMANDS` is the one list the command line is built from.
"""

from benchmarks import continual, quality, rate, soak, speed

SUBCOMMANDS = {module.NAME: module for module in (speed, quality, rate, continual, soak)}
