"""Render one edition for 100,000 recipients across 10 variants, against the naive way.

Fast path (what the send does): Renderer.variant() renders and premailer-inlines each of the
10 variants once, then personalise() fills the placeholders for every recipient.
Naive baseline (same run): a fresh render + premailer for each recipient, timed on a sample
and extrapolated to the full audience.

Prints recipients/s for both, the speed-up, and the peak memory of the fast path.
    .venv/bin/python bench/render.py [--recipients 100000] [--sample 40]
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from digest.config import load_config  # noqa: E402
from digest.render import (  # noqa: E402
    Personal,
    Renderer,
    check_size,
    personal_links,
    personalise,
)
from subscribers.audience import Recipient  # noqa: E402
from tests.render_support import make_edition  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def variants_of(sections: tuple[str, ...], n: int) -> list[tuple[str, ...]]:
    """n distinct section choices of varied length and order, as preferences produce them."""
    every = [
        combo
        for size in range(1, len(sections) + 1)
        for combo in itertools.permutations(sections, size)
    ]
    step = max(1, len(every) // (n - 1))
    return [(), *every[::step][: n - 1]]


def people(count: int, base: str) -> list[Personal]:
    names = [None, "Ana Costa", "Bo", "Zoë Łukasiewicz", "李小龍", "Mary-Jane O'Neil"]
    return [
        Personal(
            email=f"reader{i}@example.com",
            name=names[i % len(names)],
            unsubscribe_url=f"{base}/u/{i:08d}.SIGNATURE-abcdefghijklmnopqrstuvwxyz",
            preferences_url=f"{base}/p/{i:08d}.SIGNATURE-abcdefghijklmnopqrstuvwxyz",
            view_url=f"{base}/archive/daily/2026-03-10",
        )
        for i in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--variants", type=int, default=10)
    parser.add_argument("--sample", type=int, default=40, help="naive renders to time")
    args = parser.parse_args()

    config = load_config(ROOT / "tests" / "data" / "digest.toml")
    nl = config.newsletter("daily")
    edition = make_edition()
    audience = people(args.recipients, config.site.base_url)
    sections = tuple(dict.fromkeys(item.section for item in edition.items))
    choices = variants_of(sections, args.variants)
    assignment = [choices[i % len(choices)] for i in range(args.recipients)]

    # Fast path: render once per variant, personalise per recipient.
    tracemalloc.start()
    start = time.perf_counter()
    renderer = Renderer(config, nl, edition)
    total_bytes = 0
    for sections, person in zip(assignment, audience, strict=True):
        mail = personalise(renderer.variant(sections), person)
        total_bytes += len(mail.html) + len(mail.text)
    fast = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    # The same loop without tracemalloc's overhead, for the throughput figure.
    start = time.perf_counter()
    renderer = Renderer(config, nl, edition)
    for sections, person in zip(assignment, audience, strict=True):
        personalise(renderer.variant(sections), person)
    fast = time.perf_counter() - start
    sizes = [check_size(renderer.variant(s)).bytes for s in choices]

    # For scale: signing the two tokens of each recipient (the sender's cost, not counted above).
    os.environ.setdefault(config.site.secret_env, "bench-secret")
    signing = [Recipient(i, f"r{i}@example.com", None, (), None) for i in range(10_000)]
    start = time.perf_counter()
    for who in signing:
        personal_links(config, nl, edition, who)
    sign_rate = len(signing) / (time.perf_counter() - start)

    # Naive: Jinja2 render + premailer for every recipient (templates stay compiled).
    naive = Renderer(config, nl, edition)
    start = time.perf_counter()
    for sections, person in zip(assignment[: args.sample], audience, strict=False):
        naive.forget_variants()
        personalise(naive.variant(sections), person)
    naive_each = (time.perf_counter() - start) / args.sample
    naive_total = naive_each * args.recipients

    rate = args.recipients / fast
    print(
        f"edition: {len(edition.items)} stories, {len(choices)} variants, HTML "
        f"{min(sizes) / 1024:.1f}-{max(sizes) / 1024:.1f} KB per variant"
    )
    print(
        f"fast:  {args.recipients:,} recipients in {fast:.2f} s = {rate:,.0f} recipients/s "
        f"({len(choices)} renders + premailer runs)"
    )
    print(
        f"       peak traced memory {peak / 2**20:.1f} MiB; process max RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
        f"{total_bytes / 2**30:.2f} GiB of email produced"
    )
    print(
        f"naive: {naive_each * 1000:.1f} ms per recipient (sample {args.sample}) -> "
        f"{naive_total:.0f} s for {args.recipients:,} = {1 / naive_each:,.0f} recipients/s"
    )
    print(f"speed-up: {naive_total / fast:,.0f}x")
    print(f"(for scale: personal_links signs tokens for {sign_rate:,.0f} recipients/s)")


if __name__ == "__main__":
    main()
