#!/usr/bin/env python3
"""
How steady this machine's CPU is, to read the other benchmarks by.

The benchmarks here compare runs of a second or two against each other
(QutEmail against Postfix or Dovecot, encrypted against plain rounds).  On
a shared virtual machine a core can run at half its speed for a second or
more while a neighbour is busy, and then a ratio says more about the
neighbour than about the code.  This script times one fixed piece of pure
Python work (a loop of 300,000 additions) back to back for SECONDS seconds
on one core and prints the fastest, median and slowest time, and the
share of the samples that took over 1.5 times the fastest.  Run it before
and after a benchmark; on a steady machine the slowest is within some 10%
of the fastest and the share is 0.

    python bench/cpusteady.py [--seconds 20]
"""

import argparse
import statistics
import time

LOOP = 300_000


def sample() -> float:
    """
    @return: the seconds one fixed loop takes.
    """
    started = time.perf_counter()
    total = 0
    for number in range(LOOP):
        total += number
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """
    Time the loop for the given seconds and print the summary.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    samples = []
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        samples.append(sample())
    fastest = min(samples)
    slow = sum(1 for s in samples if s > 1.5 * fastest)
    print(f"{len(samples)} samples of a {LOOP:,}-addition loop over {args.seconds:g} s: "
          f"fastest {fastest * 1e3:.1f} ms, median {statistics.median(samples) * 1e3:.1f} ms, "
          f"slowest {max(samples) * 1e3:.1f} ms; {100 * slow / len(samples):.0f}% over 1.5x the fastest")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
