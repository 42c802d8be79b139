"""Every benchmark behind the issues' performance targets, one after the other, in one command.

    python bench/all.py                 # ~20 min: run, cache, stream, startup, micro, inproc
    python bench/all.py --quick         # ~6 min smoke run of the same
    python bench/all.py --soak          # plus bench/soak.py (1,000,000 requests, ~5 more min)

Each tool runs as its own process with the options used for the figures in bench/README.md (or
their `--quick` form); its output goes to the terminal as it comes and, whole, to
bench/results/all-<timestamp>.md. A tool that fails is reported at the end and the others still
run; the exit code is the number of tools that failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent

#: (name, full arguments, quick arguments)
TOOLS: list[tuple[str, list[str], list[str]]] = [
    (
        "run.py",
        ["--duration", "4", "--connections", "1,16,64", "--rounds", "3", "--wait-quiet", "60"],
        ["--quick"],
    ),
    (
        "cache_bench.py",
        ["--connections", "16", "--rounds", "3", "--duration", "3", "--wait-quiet", "30"],
        ["--connections", "16", "--rounds", "1", "--duration", "2", "--no-direct"],
    ),
    (
        "stream.py",
        ["--targets", "direct,relay,passthrough,aigw-off,aigw-on", "--rounds", "3"],
        ["--quick"],
    ),
    ("startup.py", ["--runs", "10", "--starts", "5"], ["--runs", "3", "--starts", "2"]),
    ("micro.py", [], ["--rounds", "1", "--reps", "3"]),
    ("inproc.py", ["--rounds", "7", "--connections", "1,16"], ["--rounds", "2"]),
]
SOAK = ("soak.py", ["--requests", "1000000", "--starts", "5"], ["--requests", "100000"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="the tools' smoke settings")
    parser.add_argument("--soak", action="store_true", help="also run bench/soak.py")
    parser.add_argument("--only", default="", help="comma-separated tool names (e.g. run,stream)")
    args = parser.parse_args(argv)
    tools = TOOLS + ([SOAK] if args.soak else [])
    if args.only:
        wanted = {name.strip().removesuffix(".py") for name in args.only.split(",")}
        tools = [t for t in tools if t[0].removesuffix(".py") in wanted]
    results = BENCH_DIR / "results"
    results.mkdir(exist_ok=True)
    report = results / f"all-{dt.datetime.now():%Y%m%d-%H%M%S}.md"
    failed: list[str] = []
    with report.open("w") as out:
        for name, full, quick in tools:
            argv_tool = [sys.executable, str(BENCH_DIR / name), *(quick if args.quick else full)]
            title = f"## python bench/{name} {' '.join(argv_tool[2:])}"
            print(title, flush=True)
            out.write(title + "\n\n```\n")
            started = time.monotonic()
            with subprocess.Popen(
                argv_tool, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            ) as proc:
                assert proc.stdout is not None
                for line in proc.stdout:
                    sys.stdout.write(line)
                    out.write(line)
            took = time.monotonic() - started
            out.write(f"```\n\n(exit {proc.returncode}, {took:.0f} s)\n\n")
            out.flush()
            if proc.returncode != 0:
                failed.append(f"{name} (exit {proc.returncode})")
    print(f"\nbench/all.py: report in {report}")
    if failed:
        print("failed: " + ", ".join(failed))
    return len(failed)


if __name__ == "__main__":
    sys.exit(main())
