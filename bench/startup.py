"""CLI start-up: `digest --help` and `digest send --help` against `python -c "import click"`,
each a fresh interpreter, measured alternately in the same run (median of N runs).

    .venv/bin/python bench/startup.py [RUNS] [--before REV]

`--before REV` adds `digest --help` of an older digest_cli.py (`git show REV:digest_cli.py`,
imported under another name beside today's package) to the same run.

The goal (issue 16) is `digest --help` within 150 ms on this machine; the difference from the
click baseline is what digest itself adds to every `--help` and every shell completion.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    'python -c "import click" (baseline)': ["-c", "import click"],
    "digest --help": ["-c", "import digest_cli; digest_cli.main()", "--help"],
    "digest send --help": ["-c", "import digest_cli; digest_cli.main()", "send", "--help"],
    "import digest.config, digest.db (what --help no longer pays)": [
        "-c",
        "import digest.config, digest.db",
    ],
}


def once(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="?", type=int, default=21)
    parser.add_argument("--before", metavar="REV")
    options = parser.parse_args()
    cases = dict(CASES)
    env = dict(os.environ)
    if options.before:
        old = Path(tempfile.mkdtemp()) / "digest_cli_before.py"
        source = subprocess.run(
            ["git", "show", f"{options.before}:digest_cli.py"], check=True, capture_output=True
        ).stdout
        old.write_bytes(source)
        env["PYTHONPATH"] = str(old.parent)
        run_old = "import digest_cli_before as c; c.main()"
        cases[f"digest --help at {options.before}"] = ["-c", run_old, "--help"]
    times: dict[str, list[float]] = {name: [] for name in cases}
    for args in cases.values():
        once(args, env)  # warm the page cache and .pyc files
    for _ in range(options.runs):
        for name, args in cases.items():  # alternated, so host load drifts evenly
            times[name].append(once(args, env))
    base = statistics.median(times[next(iter(cases))])
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name:62} median {median * 1000:6.0f} ms  min {min(values) * 1000:6.0f} ms  "
            f"(+{(median - base) * 1000:4.0f} ms, {median / base:4.2f}x baseline)"
        )


if __name__ == "__main__":
    main()
