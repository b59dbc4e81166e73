"""CLI start-up: `digest --help` and `digest send --help` against `python -c "import click"`,
each a fresh interpreter, measured alternately in the same run (median of N runs, wall clock
and the child's CPU time, which host load disturbs less).

    .venv/bin/python bench/startup.py [RUNS] [--before REV]

`--before REV` adds both `--help` cases of an older tree (`git archive REV`, run from its own
directory so its digest package is the one imported) to the same run.

The children run with bytecode caching on (PYTHONDONTWRITEBYTECODE removed from their
environment), and the warm-up run writes the .pyc files: an installed digest has them (pip
compiles them at install), so compiling the CLI's source is not what a user's `--help` pays.

The goal (issue 16) is `digest --help` within 150 ms on this machine; the difference from the
click baseline is what digest itself adds to every `--help` and every shell completion.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HELP = ["-c", "import digest_cli; digest_cli.main()", "--help"]
SEND_HELP = ["-c", "import digest_cli; digest_cli.main()", "send", "--help"]
CASES: dict[str, tuple[list[str], str | None]] = {
    'python -c "import click" (baseline)': (["-c", "import click"], None),
    "click group --help (one command: what click's help costs)": (
        [
            "-c",
            "import click\n@click.group()\ndef g(): pass\n@g.command()\ndef c(): pass\ng()",
            "--help",
        ],
        None,
    ),
    "digest --help": (HELP, None),
    "digest send --help": (SEND_HELP, None),
    "import digest.config, digest.db (what --help does not pay)": (
        ["-c", "import digest.config, digest.db"],
        None,
    ),
}


def once(args: list[str], env: dict[str, str], cwd: str | None) -> tuple[float, float]:
    """Wall-clock and CPU (user + system) seconds of one fresh interpreter."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL, env=env, cwd=cwd)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def old_tree(rev: str) -> str:
    """digest/, subscribers/ and digest_cli.py at `rev`, unpacked in a temporary folder."""
    archive = subprocess.run(
        ["git", "archive", rev, "digest", "subscribers", "digest_cli.py"],
        check=True,
        capture_output=True,
    ).stdout
    folder = tempfile.mkdtemp(prefix="digest-before-")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="?", type=int, default=21)
    parser.add_argument("--before", metavar="REV")
    options = parser.parse_args()
    cases = dict(CASES)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    here = str(Path(__file__).resolve().parent.parent)
    if options.before:
        folder = old_tree(options.before)
        cases[f"digest --help at {options.before}"] = (HELP, folder)
        cases[f"digest send --help at {options.before}"] = (SEND_HELP, folder)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for args, cwd in cases.values():
        once(args, env, cwd or here)  # warm the page cache and write the .pyc files
    for _ in range(options.runs):
        for name, (args, cwd) in cases.items():  # alternated, so host load drifts evenly
            times[name].append(once(args, env, cwd or here))
    base_wall = statistics.median(w for w, _ in times[next(iter(cases))])
    base_cpu = statistics.median(c for _, c in times[next(iter(cases))])
    print(f"load average {os.getloadavg()[0]:.1f}, {options.runs} runs")
    for name, values in times.items():
        wall = statistics.median(w for w, _ in values)
        cpu = statistics.median(c for _, c in values)
        print(
            f"{name:60} median {wall * 1000:5.0f} ms  min {min(w for w, _ in values) * 1000:5.0f}"
            f" ms ({wall / base_wall:4.2f}x)  cpu {cpu * 1000:5.0f} ms ({cpu / base_cpu:4.2f}x)"
        )


if __name__ == "__main__":
    main()
