"""Time `lowrank --help`, `lowrank CMD --help`, `lowrank --version` and refused bad input: each a fresh Python process.

Usage:
    python benchmarks/cli_startup.py                                   # this checkout
    python benchmarks/cli_startup.py --against /tmp/old --repeat 7     # and another checkout, interleaved
    python benchmarks/cli_startup.py --mistakes --against /tmp/old     # also bad input (exit code 2)

``--against DIR`` runs the same commands from another checkout of the repository (e.g.
``git worktree add /tmp/old 0a9667c``), alternating with this one, so that the ratio is measured in one
run on the same machine state. The first round is a warm-up (file cache) and is not counted. The
package is imported from the directory given, not from what ``pip install -e`` registered. Prints a
Markdown table (median, min-max) and writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _arguments import at_least, run_main
from _results import run_meta, write_result

COMMANDS = (["--help"], ["--version"], ["convert", "--help"], ["train", "--help"], ["export", "--help"])
#: A user's typical mistakes (a bad value, a mistyped path): each must end with exit code 2.
MISTAKES = (
    ["convert", "resnet20", "--rank", "1.5"],
    ["train", "/tmp", "--epochs", "0"],
    ["train", "/nonexistent-run"],
    ["export", "/nonexistent-run", "--onnx", "m.onnx"],
    ["bench", "/nonexistent-run"],
)

# Run `lowrank_tool` from a given checkout: drop the editable-install finder, put the checkout first.
_RUN = (
    "import sys, runpy; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
    "sys.path.insert(0, sys.argv[1]); sys.argv = ['lowrank', *sys.argv[2:]]; runpy.run_module('lowrank_tool', run_name='__main__')"
)


def one(checkout: Path, argv: list[str], expected: int = 0) -> float:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _RUN, str(checkout), *argv], capture_output=True, text=True, cwd="/")
    elapsed = time.perf_counter() - start
    if out.returncode != expected:
        raise SystemExit(
            f"lowrank {' '.join(argv)} exited with {out.returncode}, not {expected}, in {checkout}: {out.stderr.strip()[-400:]}"
        )
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, help="another checkout to compare with (interleaved)")
    parser.add_argument("--repeat", type=at_least(2), default=7, help="rounds (the first is a warm-up)")
    parser.add_argument("--mistakes", action="store_true", help="also time refused bad input (exit code 2)")
    parser.add_argument("--json", default="benchmarks/results/cli_startup.json")
    args = parser.parse_args()
    here = Path(__file__).resolve().parent.parent
    checkouts = {"this checkout": here} | ({"against": args.against.resolve()} if args.against else {})
    commands = [(argv, 0) for argv in COMMANDS] + ([(argv, 2) for argv in MISTAKES] if args.mistakes else [])
    times: dict[str, dict[str, list[float]]] = {name: {" ".join(c): [] for c, _ in commands} for name in checkouts}
    for round_ in range(args.repeat):
        for argv, expected in commands:
            for name, checkout in checkouts.items():
                t = one(checkout, list(argv), expected)
                if round_:
                    times[name][" ".join(argv)].append(t)

    def cell(samples: list[float]) -> str:
        return f"{statistics.median(samples):.2f} s [{min(samples):.2f}-{max(samples):.2f}]"

    header = "| command | " + " | ".join(checkouts) + (" | ratio |" if args.against else " |")
    print(header)
    print("|---" * (len(checkouts) + 1 + bool(args.against)) + "|")
    for argv, _ in commands:
        key = " ".join(argv)
        row = f"| lowrank {key} | " + " | ".join(cell(times[name][key]) for name in checkouts)
        if args.against:
            row += (
                f" | {statistics.median(times['against'][key]) / statistics.median(times['this checkout'][key]):.1f}x"
            )
        print(row + " |")
    result = {
        "meta": run_meta("cli_startup.py"),
        "checkouts": {name: str(path) for name, path in checkouts.items()},
        "rounds_counted": args.repeat - 1,
        "seconds": times,
    }
    print(f"wrote {write_result(args.json, result)}")


if __name__ == "__main__":
    run_main(main)
