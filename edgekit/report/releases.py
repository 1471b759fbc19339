"""The release log: ``runs/releases.jsonl``, one line per deploy or rollback the host carried out.

Run files say which release was validated; only the host knows what happened after, e.g. that a
failed canary was switched back to the release it had. The report merges both (see state.py), so
a rolled-back canary shows as "rolled back", on its passing release, instead of "failed".

The log sits beside the run files (``<config dir>/runs``, where ``edgekit validate`` stores them)
and is appended to with one ``write`` per line (O_APPEND: whole lines, even from a fleet's threads
or two edgekit processes). Recording is best effort: a full disk must never fail a deploy, so an
OSError becomes a log warning. Reading treats the file as untrusted: bounded size, each line
checked, a bad line skipped with one warning naming the file and line.
"""
from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..artifact import is_release_id
from ..fleet_results import FAILED, REPAIRED, ROLLED_BACK, SWITCHED, UNCHANGED

log = logging.getLogger(__name__)

RELEASE_LOG = "releases.jsonl"
MAX_LOG_BYTES = 16 * 1024 * 1024
"""Read at most the last 16 MB (about 100,000 events); older lines fall off the history."""

OUTCOMES = (SWITCHED, UNCHANGED, REPAIRED, ROLLED_BACK, FAILED)
"""The outcome labels of the fleet commands' tables, JSON and recap (fleet_results.py), logged as they are."""


class ReleaseEvent(BaseModel):
    """One line of the log. ``current`` is the release current on the device after the action
    (None: no release is current, e.g. a first canary rolled back to nothing)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    time: str = Field(max_length=40)
    device: str = Field(min_length=1, max_length=256)
    action: str = Field(pattern="^(deploy|rollback)$")
    outcome: str = Field(pattern="^(" + "|".join(OUTCOMES) + ")$")
    release: Optional[str] = None
    """The release the action was about: the one deployed, or the one rolled back from."""
    current: Optional[str] = None
    target: Optional[str] = Field(default=None, max_length=256)
    """The deployed bundle's target profile (deploys only)."""

    @property
    def when(self) -> datetime:
        return parse_time(self.time) or datetime.min.replace(tzinfo=timezone.utc)


def parse_time(text: Any) -> Optional[datetime]:
    """An ISO 8601 UTC time ('...Z' or '+00:00') or a run file name's '20250101T000000Z' prefix."""
    if not isinstance(text, str):
        return None
    for fmt in ("%Y%m%dT%H%M%SZ",):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def log_path(runs_dir: Union[Path, str]) -> Path:
    return Path(runs_dir) / RELEASE_LOG


def project_runs(config: Any) -> Path:
    """``<config dir>/runs``: where validate stores runs by default, and where deploys log."""
    return Path(config.resolve("runs"))


def record(runs_dir: Union[Path, str], device: str, action: str, outcome: str, release: Optional[str],
           current: Optional[str], when: Optional[datetime] = None, target: Optional[str] = None) -> None:
    """Append one event; never raises for a file-system problem (the deploy itself succeeded)."""
    when = when or datetime.now(timezone.utc)
    event = {"time": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "device": device, "action": action,
             "outcome": outcome, "release": release, "current": current}
    if target is not None:
        event["target"] = target
    line = (json.dumps(event, sort_keys=True) + "\n").encode("utf-8")
    try:
        Path(runs_dir).mkdir(parents=True, exist_ok=True)
        fd = os.open(log_path(runs_dir), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning("release log %s not written: %s", log_path(runs_dir), exc)


def deploy_outcome(result: Any) -> str:
    """A DeployResult's label: unchanged (already current and intact), switched, or repaired (it
    was current with a damaged file, re-sent and swapped in place)."""
    if getattr(result, "skipped", False):
        return UNCHANGED
    return SWITCHED if getattr(result, "switched", False) else REPAIRED


def record_deploy(runs_dir: Union[Path, str], result: Any) -> None:
    """Log a successful deploy (a ``DeployResult``): its release is now current."""
    record(runs_dir, result.device, "deploy", deploy_outcome(result), result.release_id, result.release_id,
           target=result.target)


def record_rollback(runs_dir: Union[Path, str], result: Any) -> None:
    """Log a rollback (a ``RollbackResult``): from ``from_release`` to ``to_release`` (None: nothing current)."""
    record(runs_dir, result.device, "rollback", ROLLED_BACK, result.from_release, result.to_release)


def read_log(path: Union[Path, str], warn: Optional[Callable[[str], None]] = None) -> List[ReleaseEvent]:
    """The events in the file (none when it does not exist), in time order."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - MAX_LOG_BYTES))
            raw = f.read(MAX_LOG_BYTES)
    except FileNotFoundError:
        return []
    except OSError as exc:
        if warn is not None:
            warn(f"{path}: cannot read the release log: {exc.strerror or exc}")
        return []
    lines = raw.split(b"\n")
    if size > MAX_LOG_BYTES:
        lines = lines[1:]  # the first line was cut in the middle
    events: List[ReleaseEvent] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        problem = None
        try:
            event = ReleaseEvent.model_validate(json.loads(line.decode("utf-8")))
        except ValidationError as exc:
            problem = "field " + ".".join(map(str, exc.errors()[0]["loc"])) + ": " + exc.errors()[0]["msg"]
        except (ValueError, RecursionError):
            problem = "not a JSON object"
        else:
            if parse_time(event.time) is None:
                problem = "field time: not an ISO 8601 time"
            elif any(v is not None and not is_release_id(v) for v in (event.release, event.current)):
                problem = "field release/current: not a release id"
        if problem is not None:
            if warn is not None:
                warn(f"{path}: line {number} skipped ({problem})")
            continue
        events.append(event)
    return sorted(events, key=lambda e: e.when)


def load_events(paths: Sequence[Union[Path, str]] = (), runs_dir: Union[Path, str, None] = None,
                warn: Optional[Callable[[str], None]] = None) -> List[ReleaseEvent]:
    """The release log beside the runs: ``runs_dir``'s, or, when run files or folders are named,
    the log in each named folder and beside each named file."""
    folders = [Path(p) if Path(p).is_dir() else Path(p).parent for p in paths] if paths else [Path(runs_dir or "runs")]
    events: List[ReleaseEvent] = []
    for folder in dict.fromkeys(f.resolve() for f in folders):
        events += read_log(log_path(folder), warn)
    return sorted(events, key=lambda e: e.when)
