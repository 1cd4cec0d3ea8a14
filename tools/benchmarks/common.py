"""Shared helpers for the benchmarks: timing, medians and a plain table."""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager


@contextmanager
def stopwatch(results: list[float]):
    start = time.perf_counter()
    yield
    results.append(time.perf_counter() - start)


def median(values: list[float]) -> float:
    return statistics.median(values)


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*row))
