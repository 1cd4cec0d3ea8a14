"""Sizes and durations as people write them: `512M`, `1G`, `90s`, `15min`, `1h`.

Parsers raise ValueError with a one-line reason; the command line and the
configuration file both use them, so `--interval 15min` and `interval = "15min"`
mean the same.
"""

from __future__ import annotations

import re

OFF = "off"

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?(?:/s)?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """"1G", "512MiB", "10M/s", "65536" -> bytes (K, M, G, T are powers of 1024)."""
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"not a size: {text!r} (e.g. 512M, 1G)")
    value = float(match.group(1)) * 1024 ** " kmgt".index(match.group(2).lower() or " ")
    if value < 1:
        raise ValueError(f"must be positive: {text!r}")
    return int(value)


def parse_duration(text: str) -> float:
    """"300", "30s", "5m", "15min", "1h", "7d", "2w" -> seconds."""
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"not a duration: {text!r} (e.g. 300, 5m, 1h)")
    unit = (match.group(2) or "s").lower()
    seconds = float(match.group(1)) * {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400,
                                           "w": 604800}[unit]
    if seconds <= 0:
        raise ValueError(f"must be positive: {text!r}")
    return seconds


def parse_duration_or_off(text: str) -> float | str:
    """A duration, or "off"."""
    return OFF if str(text).strip().lower() == OFF else parse_duration(text)


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """"127.0.0.1:9477", "[::1]:9477", ":9477" or "9477" -> (host, port); loopback
    unless a host is named."""
    host, _, port = str(text).strip().rpartition(":")
    host = host.strip("[]") or default_host
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not an address: {text!r} (e.g. 127.0.0.1:9477 or :9477)")
    return host, int(port)
