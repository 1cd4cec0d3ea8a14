"""Prometheus metrics of a mount, from the same status dict `cloudfs status --json` shows.

`MetricsServer(host, port)` listens at once (so a port in use is an error
before anything is mounted) and serves `/metrics` in a thread of
prometheus-client's. On each scrape it asks for the mount's status through
the function given to `attach()` and turns it into `cloudfs_…` series with
`families(status, now_ns)`: one source of truth, so the two always agree.

Series that belong to work still to come have their place here, not yet their
value: cache hit rates (the live mount keeps no cache whose hits it counts
today).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

import cloudfs
from cloudfs.errors import UsageError

log = logging.getLogger(__name__)

NS = 1e9


def families(status: dict, now_ns: int) -> Iterator[Metric]:
    """The series of one mount's `status` (docs/operations.md lists them)."""
    yield InfoMetricFamily("cloudfs_mount", "The protected directory this process serves", value={
        "source": str(status.get("source")), "mountpoint": str(status.get("mountpoint")),
        "repository": str(status.get("repository") or ""), "version": cloudfs.__version__})
    oldest = status.get("oldest_change_ns")
    yield _gauge("rpo_seconds", "Age of the oldest change not yet in a committed snapshot (the live RPO)",
                 (now_ns - oldest) / NS if oldest else 0.0)
    yield _gauge("backlog_files", "Files with changes not yet in a committed snapshot",
                 status.get("pending_files", 0))
    yield _gauge("backlog_bytes", "Bytes of changes not yet in a committed snapshot (roughly)",
                 status.get("pending_bytes", 0))
    yield _gauge("sealed_epochs", "Sealed epochs waiting for their snapshot to commit",
                 len(status.get("sealed_epochs") or ()))
    rescan = (status.get("rescan") or {}).get("last")
    if rescan:
        yield _gauge("rescan_last_timestamp_seconds", "When the last rescan ran", rescan["time_ns"] / NS)
        yield _gauge("rescan_changed_inodes", "Inodes the last rescan found changed outside the mount",
                     rescan["changed_inodes"])
    yield from _tripwire_families(status)
    if status.get("repository") is not None:
        yield from _snapshot_families(status, now_ns)


def _tripwire_families(status: dict) -> Iterator[Metric]:
    alerts = status.get("alerts") or []
    yield _gauge("tripwire_alerts", "Ransomware tripwire alerts not yet acknowledged (cloudfs alerts ack)",
                 len(alerts))
    if alerts:
        yield _gauge("tripwire_alert_timestamp_seconds", "When the newest open tripwire alert fired",
                     alerts[-1]["burst"]["fired_ns"] / NS)


def _snapshot_families(status: dict, now_ns: int) -> Iterator[Metric]:
    upload = status.get("upload", {})
    in_flight = status.get("in_flight") or {}
    yield _gauge("in_flight_bytes", "Bytes the snapshot being uploaded has to read",
                 in_flight.get("bytes_to_read", 0))
    yield _gauge("in_flight_read_bytes", "Bytes the snapshot being uploaded has read so far",
                 upload.get("current_bytes_read", 0))
    yield _gauge("upload_rate_bytes_per_second", "Upload rate of the last snapshot",
                 upload.get("upload_rate", 0.0))
    yield _counter("stored_bytes", "Bytes uploaded to the store by this process",
                   upload.get("bytes_stored", 0))
    yield _counter("snapshots_committed", "Snapshots this process committed",
                   upload.get("snapshots_committed", 0))
    if upload.get("repository_snapshots") is not None:
        yield _gauge("repository_snapshots", "Snapshot objects in the repository (every host and "
                     "directory), as last listed", upload["repository_snapshots"])
    yield _counter("snapshot_failures", "Snapshots given up (retried from a new seal)",
                   status.get("failures", 0))
    yield _gauge("store_up", "1 if the store answers, 0 while it is unreachable or refuses us",
                 1 if upload.get("store_ok", True) else 0)
    yield _gauge("spool_bytes", "Copy-on-write spool in use", status.get("spool_bytes", 0))
    yield _gauge("spool_limit_bytes", "Copy-on-write spool limit", status.get("spool_limit", 0))
    yield _gauge("snapshot_interval_seconds", "How often a snapshot is sealed", status.get("interval", 0))
    if status.get("next_snapshot_ns"):
        yield _gauge("next_snapshot_timestamp_seconds", "When the next snapshot is due",
                     status["next_snapshot_ns"] / NS)
    yield from _target_families(status.get("targets") or [])
    yield from _drill_families(status.get("last_drill"), now_ns)
    last = upload.get("last_snapshot_time_ns")
    if last:
        yield _gauge("last_snapshot_timestamp_seconds", "Time of the newest committed snapshot", last / NS)
        yield _gauge("last_snapshot_age_seconds", "Age of the newest committed snapshot", (now_ns - last) / NS)


def _target_families(targets: list[dict]) -> Iterator[Metric]:
    """Per target (a label): up, backlog and how far behind it is."""
    if not targets:
        return
    series = {
        "target_up": ("1 unless the target is failing", lambda t: 0 if t.get("error") else 1),
        "target_backlog_objects": ("Objects the target has yet to receive", lambda t: t["backlog_objects"]),
        "target_backlog_bytes": ("Bytes the target has yet to receive", lambda t: t["backlog_bytes"]),
        "target_lag_seconds": ("How long the oldest object waiting for the target has waited",
                               lambda t: t["lag_seconds"]),
    }
    for name, (documentation, value_of) in series.items():
        family = GaugeMetricFamily(f"cloudfs_{name}", documentation, labels=["target"])
        for target in targets:
            family.add_metric([target["name"]], value_of(target))
        yield family


def _drill_families(drill: dict | None, now_ns: int) -> Iterator[Metric]:
    """The last `cloudfs drill` of the repository on this machine: when, and per
    target (a label; `repository` for one kept in one place) its RTO and throughput."""
    if not drill:
        return
    yield _gauge("last_drill_timestamp_seconds", "When the last recovery drill ran", drill["time_ns"] / NS)
    yield _gauge("last_drill_age_seconds", "Age of the last recovery drill", (now_ns - drill["time_ns"]) / NS)
    series = {
        "last_drill_ok": ("1 if the target restored its sample in the last drill", lambda t: 1 if t["ok"] else 0),
        "last_drill_rto_seconds": ("Projected time to restore the whole snapshot from the target (RTO)",
                                   lambda t: t["rto_seconds"]),
        "last_drill_throughput_bytes_per_second": ("Restore throughput the last drill measured",
                                                   lambda t: t["throughput_bytes_per_second"]),
    }
    for name, (documentation, value_of) in series.items():
        family = GaugeMetricFamily(f"cloudfs_{name}", documentation, labels=["target"])
        for target in drill["targets"]:
            value = value_of(target)
            if value is not None:
                family.add_metric([target["target"] or "repository"], value)
        yield family


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"cloudfs_{name}", documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"cloudfs_{name}", documentation, value=value)


class _StatusCollector(Collector):
    def __init__(self, clock: Callable[[], int]):
        self.read_status: Callable[[], dict] | None = None
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily("cloudfs_mount_ready", "1 once the mount serves requests")
        status = None
        if self.read_status is not None:
            try:
                status = self.read_status()
            except Exception as error:  # noqa: BLE001 - a scrape while stopping
                log.debug("no status for the metrics: %s", error)
        ready.add_metric([], 1 if status is not None else 0)
        yield ready
        if status is not None:
            yield from families(status, self.clock())


class MetricsServer:
    """`/metrics` on (host, port), served from a thread until `close()`."""

    def __init__(self, host: str, port: int, clock: Callable[[], int]):
        self.registry = CollectorRegistry(auto_describe=False)
        self._collector = _StatusCollector(clock)
        self.registry.register(self._collector)
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            raise UsageError(f"cannot serve metrics on {host}:{port}: {error.strerror}") from None
        log.info("metrics at http://%s:%d/metrics", host, port)

    def attach(self, read_status: Callable[[], dict]) -> None:
        """From now on, scrapes show the status `read_status()` returns."""
        self._collector.read_status = read_status

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
