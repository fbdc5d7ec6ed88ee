"""`bench.py speed` of this tree against another tree (a worktree of an earlier commit), in
alternating runs on one machine: old, new, old, new, ... Machines drift, so speeds are
compared only as the ratio within each pair; the median of the pairs is the figure.

    uv run python docs/speed_pairs.py --old /tmp/old --pairs 5 --out docs/results/speed_pairs.jsonl [-- FLAGS]

FLAGS go to both `bench.py speed` runs (say `--streams 8`). Each run's JSON is appended to
--out with its side; the last line printed is the summary.
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

NEW = Path(__file__).resolve().parent.parent


def speed(tree: Path, flags: list[str]) -> dict:
    result = subprocess.run(
        [sys.executable, str(tree / "bench.py"), "speed", "--json", *flags],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="the tree to compare against")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, one per run")
    parser.add_argument("--field", default="update_fps", help="the figure compared (stream_updates_per_s, ...)")
    parser.add_argument("flags", nargs="*", help="bench.py speed flags for both sides")
    args = parser.parse_args()
    ratios = []
    with open(args.out, "a") as out:
        for pair in range(args.pairs):
            figures = {}
            for side, tree in (("old", args.old), ("new", NEW)):
                report = speed(tree, args.flags)
                figures[side] = report[args.field]
                out.write(json.dumps({"side": side, "pair": pair, "tree": str(tree), **report}) + "\n")
                out.flush()
            ratios.append(figures["new"] / figures["old"])
            print(f"pair {pair}: old {figures['old']}  new {figures['new']}  new/old {ratios[-1]:.3f}", flush=True)
    print(
        json.dumps(
            {
                "field": args.field,
                "ratios": [round(r, 3) for r in ratios],
                "median": round(statistics.median(ratios), 3),
                "flags": args.flags,
            }
        )
    )


if __name__ == "__main__":
    main()
