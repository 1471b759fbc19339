"""Which release each device runs now, and whether that release passed: run files and the
release log (releases.py) merged into one time line per device.

A validation run always measures the release that is current at that moment, so a run says
"current was X" just as a deploy or rollback event does. The last of them gives the current
release; the device's status is that release's latest run, so a canary whose new release failed
and was rolled back reads "rolled back" and is judged on the release it is back on.

Times: events carry the host's UTC time in microseconds; a run is placed where the host stored
it (``RunRecord.when``: the UTC second in its file name, refined by the file's mtime). Neither is
ever later than the moment the run was stored, so a rollback made after a run sorts after it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .releases import FAILED, ROLLED_BACK, ReleaseEvent
from .runs import RunRecord

PASS, NOT_VALIDATED = "pass", "not validated"
STATUSES = (PASS, FAILED, ROLLED_BACK, NOT_VALIDATED)
"""A device's status in the report: its current release passed, failed, was rolled back to (from
a release that failed or was abandoned), or has no run yet."""
HISTORY_ROWS = 30
"""Newest entries per device in the history table; older ones are counted, not listed."""

_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


def run_passed(run: RunRecord) -> bool:
    """The run's own verdict and every part of it: no error, metric, extra checks and guards."""
    return bool(run.ok and not run.error and run.summary()["passed"] is not False)


@dataclass
class DeviceState:
    device: str
    current: Optional[str]
    """The release current on the device, as far as runs and the log tell (None: none, or unknown)."""
    status: str
    run: Optional[RunRecord] = None
    """The latest run of the current release: what the fleet table shows for the device."""
    rolled_back_from: Optional[str] = None
    abandoned: Optional[RunRecord] = None
    """For a rolled-back device: the latest run of the release it left (the failed canary run)."""
    history: List[Dict[str, Any]] = field(default_factory=list)
    """Every run and event, oldest first (see ``history_rows``)."""
    target: Optional[str] = None
    """The target of the current release when no run says it (from its deploy event)."""

    @property
    def passing(self) -> bool:
        """On a release whose latest run passed (a rolled-back canary counts: it is back on one)."""
        return self.run is not None and self.status in (PASS, ROLLED_BACK) and run_passed(self.run)

    @property
    def failing(self) -> bool:
        return self.status == FAILED

    def row(self) -> Dict[str, Any]:
        """The run's summary row (or an empty one) with the device's current release and status."""
        base = (self.run or RunRecord(path=Path(""), device=self.device)).summary()
        base.update(path=str(self.run.path) if self.run is not None else None, device=self.device,
                    target=base.get("target") or self.target, release_id=self.current, status=self.status,
                    rolled_back_from=self.rolled_back_from,
                    rolled_back_error=run_problem(self.abandoned) if self.abandoned is not None else None)
        return base


def run_problem(run: RunRecord) -> str:
    """Why a run failed, in one line: its error, else the metric against its threshold."""
    if run.error:
        return str(run.error.get("message") or run.error.get("kind") or "error")
    m = run.metric
    if m.get("passed") is False:
        return f"{m.get('name')} {m.get('value')} below threshold {m.get('threshold')}"
    failed = [str(c.get("name")) for c in m.get("also") or [] if not c.get("passed")]
    if failed:
        return "check(s) failed: " + ", ".join(failed)
    if run.guard is not None and not run.guard.get("passed", True):
        return "guards failed"
    return "not ok"


Item = Tuple[datetime, int, Union[RunRecord, ReleaseEvent]]


def _timeline(runs: Sequence[RunRecord], events: Sequence[ReleaseEvent]) -> List[Item]:
    # On an exact tie the event goes first: a run truncated to that second was stored at or after it.
    items: List[Item] = [(r.when, 1, r) for r in runs]
    items += [(e.when, 0, e) for e in events]
    return sorted(items, key=lambda t: (t[0], t[1]))


def device_state(device: str, runs: Sequence[RunRecord], events: Sequence[ReleaseEvent]) -> DeviceState:
    current: Optional[str] = None
    last_rollback: Optional[ReleaseEvent] = None
    targets: Dict[Optional[str], str] = {}
    latest_of: Dict[Optional[str], RunRecord] = {}
    history: List[Dict[str, Any]] = []
    for when, _, item in _timeline(runs, events):
        if isinstance(item, RunRecord):
            current, last_rollback = item.release_id, None
            latest_of[item.release_id] = item
            s = item.summary()
            history.append({"time": when, "event": "validate", "release_id": item.release_id,
                            "result": PASS if run_passed(item) else FAILED, "metric": s["metric"],
                            "value": s["value"], "p50_ms": s["p50_ms"], "emulated": s["emulated"],
                            "run": item.path.name, "note": run_problem(item) if not run_passed(item) else None})
            continue
        history.append({"time": when, "event": item.action, "release_id": item.release, "result": item.outcome,
                        "note": f"now current: {item.current or 'none'}" if item.action == "rollback" else None})
        if item.target is not None and item.release is not None:
            targets[item.release] = item.target
        if item.outcome == FAILED:
            continue  # what is current after a failed action is not known: the next run says
        current = item.current
        last_rollback = item if item.action == "rollback" else None
    # Rolled back to nothing (a first deploy undone): no run of "no release" speaks for the device.
    run = None if last_rollback is not None and current is None else latest_of.get(current)
    if last_rollback is not None and (run is None or run_passed(run)):
        status = ROLLED_BACK
    elif run is None:
        status = NOT_VALIDATED
    else:
        status = PASS if run_passed(run) else FAILED
    state = DeviceState(device, current, status, run, history=history, target=targets.get(current))
    if last_rollback is not None:
        state.rolled_back_from = last_rollback.release
        state.abandoned = latest_of.get(last_rollback.release)
    return state


def fleet_state(runs: Sequence[RunRecord], events: Sequence[ReleaseEvent] = ()) -> List[DeviceState]:
    """One state per device seen in a run or in the log, by device name."""
    devices = sorted({r.device for r in runs} | {e.device for e in events})
    return [device_state(d, [r for r in runs if r.device == d], [e for e in events if e.device == d])
            for d in devices]


def history_rows(state: DeviceState, limit: int = HISTORY_ROWS) -> Tuple[List[Dict[str, Any]], int]:
    """The newest ``limit`` history entries, newest first, with times as text; and how many were left out."""
    rows = [dict(h, time=h["time"].strftime("%Y-%m-%d %H:%M:%S") if h["time"] != _EPOCH else "-")
            for h in reversed(state.history)]
    return rows[:limit], max(0, len(rows) - limit)
