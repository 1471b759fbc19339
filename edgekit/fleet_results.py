"""Per-host results of a fleet command, and the interface every fleet engine implements.

Every device command on a group (deploy, validate, status, rollback, doctor) produces one
:class:`HostResult` per host, whichever engine did the work: the built-in one (threads over
edgekit's own transports, edgekit/fleet_engine.py) or Ansible (a collection driven through
ansible-runner). The CLI renders the same values three ways: one live line per host as it
finishes, a recap like Ansible's PLAY RECAP (:class:`Recap`), and ``--json`` (one object per host,
errors as ``{kind, message, hint}``).

An engine is anything with the :class:`Engine` methods. Each *yields* a HostResult as soon as that
host is done (so progress is live), in completion order, exactly one per host given, including
hosts it never touched (outcome ``not attempted``, with the reason in ``error``). Engines never
print and never raise for one host's failure: a host's failure is a value. They raise EdgekitError
only for what stops the whole command before any host is touched (a missing bundle, a bad option).

Outcome labels (the report uses the same words):

========================  =======================================================================
``switched``              deploy: the release was uploaded or already there, and is now current
``unchanged``             deploy: the release was already current and intact; nothing changed
``repaired``              deploy: the release was already current, damaged files were restored
``rolled back``           deploy: a canary that failed validation was switched back to the release
                          it had (``ok`` False: the rollout failed, but the host runs a known-good
                          release); rollback: the host was switched back (``ok`` True)
``failed``                the action failed on this host; ``error`` says why and how to fix it
``not attempted``         the rollout stopped before reaching this host (a failed canary or batch)
``ok``                    a read-only action succeeded (validate passed, status read, doctor clean)
========================  =======================================================================
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Protocol,
                    Sequence)

from .errors import EdgekitError

if TYPE_CHECKING:  # pragma: no cover
    from .config import DeviceSpec, ProjectConfig

SWITCHED, UNCHANGED, REPAIRED = "switched", "unchanged", "repaired"
ROLLED_BACK, FAILED, NOT_ATTEMPTED, OK = "rolled back", "failed", "not attempted", "ok"
OUTCOMES = (SWITCHED, UNCHANGED, REPAIRED, ROLLED_BACK, FAILED, NOT_ATTEMPTED, OK)
CHANGED = frozenset({SWITCHED, REPAIRED, ROLLED_BACK})
"""Outcomes that changed the device (Ansible's ``changed``)."""

ERROR_KINDS = ("timeout", "unreachable", "host_key_unknown", "host_key_changed", "host_key_revoked",
               "host_key_ca_unsupported", "auth", "handshake", "connection_lost", "locked", "lock_failed",
               "lock_lost", "no_space", "checksum_mismatch", "release_conflict", "deploy", "validation", "metric",
               "device", "config", "not_attempted", "unexpected")
"""``HostError.kind`` values. Engines may add their own (the Ansible engine's ``ansible``), but map
what they can to these, so scripts can branch on them whichever engine ran."""


@dataclass
class HostError:
    """Why a host failed, as data: ``kind`` for scripts, ``message`` and ``hint`` for people."""

    kind: str
    message: str
    hint: Optional[str] = None

    @classmethod
    def from_exception(cls, exc: BaseException) -> "HostError":
        """An EdgekitError keeps its message, hint and ``kind`` detail (the transport sets one for
        every connection failure); anything else is ``unexpected``."""
        if isinstance(exc, EdgekitError):
            kind = exc.details.get("kind")
            if not isinstance(kind, str):
                kind = type(exc).__name__.replace("Error", "").lower() or "device"
            return cls(kind, exc.message, exc.hint)
        return cls("unexpected", f"unexpected {type(exc).__name__}: {exc}",
                   "run again with -v; this is a bug in edgekit if it repeats")


@dataclass
class HostResult:
    """One host's result of one fleet command (see the module docstring for ``outcome``)."""

    host: str
    action: str
    """deploy | validate | status | rollback | doctor"""
    outcome: str
    ok: bool
    """Whether this host did what the command asked (the exit code follows it)."""
    release: Optional[str] = None
    """The release the host runs after the action (deploy: the one deployed or rolled back to)."""
    previous: Optional[str] = None
    """The release current before the action, where the action knows it."""
    phase: Optional[str] = None
    """``canary``, ``batch 1``, ``batch 2``... in a staged rollout; None otherwise."""
    summary: str = ""
    """One short line for the table: what happened, in words (``p50 0.04 ms, top1 0.98 pass``)."""
    error: Optional[HostError] = None
    seconds: float = 0.0
    engine: str = "builtin"
    deploy: Any = None
    """deploy: the engine's DeployResult (edgekit.deploy), when the deploy got that far."""
    validation: Any = None
    """validate, or a canary's check: the ValidationResult (edgekit.validate)."""
    data: Any = None
    """status: DeviceStatus; rollback: RollbackResult; doctor: DoctorReport."""

    @property
    def changed(self) -> bool:
        # A rolled-back canary ends where it started: counted under rolled_back, not changed.
        return self.outcome in CHANGED and not (self.outcome == ROLLED_BACK and self.action == "deploy")

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"host": self.host, "action": self.action, "outcome": self.outcome, "ok": self.ok,
                               "changed": self.changed, "release": self.release, "previous": self.previous,
                               "phase": self.phase, "summary": self.summary, "seconds": self.seconds,
                               "engine": self.engine, "error": asdict(self.error) if self.error else None}
        for key in ("deploy", "validation", "data"):
            value = getattr(self, key)
            if value is not None:
                out[key] = to_jsonable(value)
        return out


def to_jsonable(value: Any) -> Any:
    """Dataclasses (DeployResult, DeviceStatus), pydantic models (ValidationResult, DoctorReport) and
    paths as plain JSON values: the fleet's JSON lines and the CLI's --json output alike."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "__dataclass_fields__"):
        return to_jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "__fspath__"):
        return str(value)
    return value


@dataclass
class Recap:
    """Counts over the hosts of one command, like Ansible's PLAY RECAP."""

    ok: int = 0
    changed: int = 0
    unchanged: int = 0
    failed: int = 0
    rolled_back: int = 0
    not_attempted: int = 0

    @classmethod
    def of(cls, results: Iterable[HostResult]) -> "Recap":
        r = cls()
        for h in results:
            r.ok += h.ok
            r.changed += h.changed
            r.unchanged += h.outcome == UNCHANGED
            r.failed += h.outcome == FAILED
            r.rolled_back += h.outcome == ROLLED_BACK
            r.not_attempted += h.outcome == NOT_ATTEMPTED
        return r

    def line(self) -> str:
        return (f"ok={self.ok} changed={self.changed} unchanged={self.unchanged} failed={self.failed} "
                f"rolled_back={self.rolled_back} not_attempted={self.not_attempted}")


@dataclass
class FleetRun:
    """Every host's result of one fleet command, in the order the hosts were given."""

    action: str
    results: Dict[str, HostResult] = field(default_factory=dict)
    canary: List[str] = field(default_factory=list)
    stopped: Optional[str] = None
    """Why a staged rollout stopped early, if it did."""
    seconds: float = 0.0
    engine: str = "builtin"

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results.values())

    @property
    def failed(self) -> List[str]:
        """Hosts that did not do what was asked (failed, rolled back, not attempted): what
        ``--retry-failed`` reruns."""
        return [n for n, r in self.results.items() if not r.ok]

    @property
    def recap(self) -> Recap:
        return Recap.of(self.results.values())

    @property
    def release_ids(self) -> Dict[str, str]:
        return {n: r.release for n, r in self.results.items() if r.release}

    def to_json(self) -> Dict[str, Any]:
        return {"action": self.action, "engine": self.engine, "ok": self.ok, "canary": self.canary,
                "stopped": self.stopped, "seconds": self.seconds, "recap": asdict(self.recap),
                "failed": self.failed, "hosts": [r.to_json() for r in self.results.values()]}


@dataclass
class DeployOptions:
    """What ``edgekit deploy`` asks of an engine, already checked by the CLI."""

    canary: List[str] = field(default_factory=list)
    """Host names that go first and are validated on the device; empty: no canary stage."""
    batch_size: Optional[int] = None
    """Hosts per batch after the canaries (default: max_parallel); each batch gates the next."""
    max_parallel: int = 8
    duration: float = 1.0
    """Seconds of timed runs when validating canaries."""
    quick: bool = False
    lock_timeout: float = 60.0
    connect_timeout: Optional[float] = None
    """Seconds to reach each host (None: ConnectTimeout from ~/.ssh/config, else 10)."""


@dataclass
class ValidateOptions:
    """What ``edgekit validate`` asks of an engine."""

    duration: float = 2.0
    quick: bool = False
    threads: Optional[int] = None
    repeat: int = 1
    power: Any = None
    """A PowerSpec (edgekit.config), or None for edgekit.toml's [power]."""
    runs_dir: Optional[Path] = None
    max_result_mb: Optional[float] = None
    max_parallel: int = 8
    connect_timeout: Optional[float] = None


OnResult = Callable[[HostResult], None]


class Engine(Protocol):
    """A fleet engine. ``bundles`` maps each host name to its checked bundle directory
    (edgekit.fleet.bundle_for); results come back one per host as each finishes."""

    name: str

    def deploy(self, config: "ProjectConfig", hosts: Sequence["DeviceSpec"], bundles: Mapping[str, Path],
               options: DeployOptions) -> Iterator[HostResult]:
        ...

    def validate(self, config: "ProjectConfig", hosts: Sequence["DeviceSpec"],
                 options: ValidateOptions) -> Iterator[HostResult]:
        ...


def collect(action: str, hosts: Sequence["DeviceSpec"], results: Iterable[HostResult],
            on_result: Optional[OnResult] = None, engine: str = "builtin") -> FleetRun:
    """Drain an engine's results into a FleetRun (host order kept), calling ``on_result`` on each as
    it arrives: the CLI prints its live line there."""
    import time

    t0 = time.perf_counter()
    got: Dict[str, HostResult] = {}
    for r in results:
        got[r.host] = r
        if on_result is not None:
            on_result(r)
    run = FleetRun(action, engine=engine)
    for h in hosts:
        if h.name in got:
            run.results[h.name] = got.pop(h.name)
    run.results.update(got)  # an engine's extra hosts (never expected) are kept, not dropped
    canaries = [r.host for r in run.results.values() if r.phase == "canary"]
    run.canary = canaries
    stops = [r.error.message for r in run.results.values() if r.outcome == NOT_ATTEMPTED and r.error]
    run.stopped = stops[0].removeprefix("rollout stopped: ") if stops else None
    run.seconds = round(time.perf_counter() - t0, 3)
    return run
