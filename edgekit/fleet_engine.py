"""The built-in fleet engine: threads over edgekit's own transports (paramiko for SSH devices).

Every action runs on up to ``max_parallel`` hosts at once and yields one HostResult per host as it
finishes (see edgekit/fleet_results.py for the labels and the Engine protocol the Ansible engine
implements too). A staged deploy sends the canaries first, validates them on the device, switches
failed canaries back to the release they had, and stops; otherwise the rest follow in batches, each
gating the next.
"""
from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from .config import DeviceSpec, ProjectConfig
from .errors import EdgekitError
from .fleet_results import (FAILED, NOT_ATTEMPTED, OK, REPAIRED, ROLLED_BACK, SWITCHED, UNCHANGED, DeployOptions,
                            HostError, HostResult, ValidateOptions)
from .report.releases import project_runs, record_deploy, record_rollback
from .transport import Transport, connect

Validate = Callable[..., Any]
"""``validate(config, device, *, transport=..., duration=..., accept_new_host_key=...)`` returning an
object with ``.ok`` (edgekit.validate.validate_device by default)."""
HostAction = Callable[[DeviceSpec], HostResult]


def with_timeout(device: DeviceSpec, connect_timeout: Optional[float]) -> DeviceSpec:
    """The device with ``--connect-timeout`` applied (it wins over edgekit.toml and ~/.ssh/config)."""
    return device.model_copy(update={"connect_timeout": connect_timeout}) if connect_timeout else device


def fan_out(hosts: Sequence[DeviceSpec], action: str, run: HostAction, max_parallel: int,
            phase: Optional[str] = None) -> Iterator[HostResult]:
    """``run`` on every host, at most ``max_parallel`` at once; results as each host finishes. One
    host's surprise becomes its failed result and never costs the other hosts theirs."""
    def guarded(host: DeviceSpec) -> HostResult:
        t0 = time.perf_counter()
        try:
            res = run(host)
        except Exception as exc:  # noqa: BLE001 -- the promise: a value per host, whatever happened
            res = HostResult(host.name, action, FAILED, False, error=HostError.from_exception(exc))
        res.phase = res.phase or phase
        res.seconds = res.seconds or round(time.perf_counter() - t0, 3)
        return res

    if not hosts:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(hosts))), thread_name_prefix=f"edgekit-{action}") as pool:
        pending: Dict[Future, DeviceSpec] = {pool.submit(guarded, h): h for h in hosts}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                pending.pop(f)
                yield f.result()


def deploy_outcome(res: Any) -> str:
    """switched / unchanged / repaired, from a DeployResult (edgekit.deploy)."""
    if res.skipped:
        return UNCHANGED
    return SWITCHED if res.switched else REPAIRED


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.0f} kB" if n >= 1000 else f"{n} B"


def _fmt(v: Any) -> str:
    return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def validation_summary(v: Any) -> str:
    """``top1 0.98 >= 0.95 pass, p50 0.041 ms`` from a ValidationResult."""
    m = getattr(v, "metric", None) or {}
    lat = getattr(v, "latency", None) or {}
    parts = []
    if m:
        parts.append(f"{m.get('name')} {_fmt(m.get('value'))} (threshold {_fmt(m.get('threshold'))}) "
                     + ("pass" if m.get("passed") else "FAIL"))
    if lat.get("p50_ms") is not None:
        parts.append(f"p50 {_fmt(lat.get('p50_ms'))} ms")
    return ", ".join(parts)


class BuiltinEngine:
    """The default engine (see the module docstring)."""

    name = "builtin"

    def __init__(self, validate: Optional[Validate] = None) -> None:
        self._validate = validate

    def _validator(self) -> Validate:
        if self._validate is None:
            from .validate import validate_device  # lazily: it pulls in the run-file machinery

            self._validate = validate_device
        return self._validate

    # ------------------------------------------------------------------------------------------
    # deploy
    # ------------------------------------------------------------------------------------------
    def deploy(self, config: ProjectConfig, hosts: Sequence[DeviceSpec], bundles: Mapping[str, Path],
               options: DeployOptions, checked: Optional[Dict[Path, Tuple[Any, Any]]] = None) -> Iterator[HostResult]:
        from .deploy import verified_files

        checked = checked if checked is not None else {b: verified_files(b) for b in set(bundles.values())}
        parallel = max(1, options.max_parallel)
        names = set(options.canary)
        canaries = [h for h in hosts if h.name in names]
        rest = [h for h in hosts if h.name not in names]

        def one(phase: Optional[str], check: bool) -> HostAction:
            return lambda h: self._deploy_host(config, h, bundles[h.name], checked[bundles[h.name]], options, phase, check)

        if canaries:
            outcomes = list(fan_out(canaries, "deploy", one("canary", True), parallel, "canary"))
            if not all(o.ok for o in outcomes):
                bad = ", ".join(o.host for o in outcomes if not o.ok)
                stopped = f"canary failed on {bad}"
                for o in outcomes:
                    self._roll_back_canary(config, next(h for h in canaries if h.name == o.host), o, options)
                    yield o
                yield from _not_attempted(rest, "deploy", "after canary", stopped)
                return
            yield from outcomes
            size = max(1, options.batch_size or parallel)
            for i in range(0, len(rest), size):
                batch, phase = rest[i:i + size], f"batch {i // size + 1}"
                results = []
                for r in fan_out(batch, "deploy", one(phase, False), parallel, phase):
                    results.append(r)
                    yield r
                if not all(r.ok for r in results):
                    yield from _not_attempted(rest[i + size:], "deploy", "after " + phase, f"{phase} failed")
                    return
        else:
            yield from fan_out(list(hosts), "deploy", one(None, False), parallel)

    def _deploy_host(self, config: ProjectConfig, device: DeviceSpec, bundle: Path, checked: Any, options: DeployOptions,
                     phase: Optional[str], check: bool) -> HostResult:
        from .deploy import DeployResult, deploy

        start = time.perf_counter()
        out = HostResult(device.name, "deploy", FAILED, False, phase=phase, release=str(checked[0]["release_id"]))
        try:
            with connect(with_timeout(device, options.connect_timeout), config,
                         accept_new_host_key=options.accept_new_host_key) as t:
                res = deploy(t, bundle, keep_releases=config.deploy.keep_releases, lock_timeout=options.lock_timeout,
                             verified=checked)
                record_deploy(project_runs(config), res)  # the report's release log (what is current where)
                out.deploy, out.outcome, out.ok = res, deploy_outcome(res), True
                out.previous = res.previous
                out.summary = (f"sent {_mb(res.uploaded_bytes)}" if res.uploaded_files else "nothing sent") \
                    + (f", {res.reused_files} file(s) reused" if res.reused_files else "")
                if check:
                    self._check_canary(config, device, t, options, out)
        except Exception as exc:  # noqa: BLE001 -- one device's failure is its result, not the fleet's
            out.ok, out.outcome, out.error = False, FAILED, HostError.from_exception(exc)
            if out.deploy is None and isinstance(exc, EdgekitError):
                # A deploy that failed after (or maybe after) its switch still says so: the canary
                # rollback depends on it (a canary that switched is always switched back).
                failed = exc.details.get("result")
                out.deploy = failed if isinstance(failed, DeployResult) else None
                current = exc.details.get("current")
                out.release = current if isinstance(current, str) else None
        out.seconds = round(time.perf_counter() - start, 3)
        return out

    def _check_canary(self, config: ProjectConfig, device: DeviceSpec, t: Transport, options: DeployOptions,
                      out: HostResult) -> None:
        try:
            v = self._validator()(config, device, transport=t, duration=options.duration,
                                  accept_new_host_key=options.accept_new_host_key,
                                  **({"quick": True} if options.quick else {}))
        except EdgekitError as exc:
            out.ok, out.outcome = False, FAILED
            out.error = HostError(exc.details.get("kind") or "validation", f"on-device validation failed: {exc.message}", exc.hint)
            out.validation = exc.details.get("result")
            return
        out.validation = v
        out.summary = ", ".join(p for p in (out.summary, validation_summary(v)) if p)
        if not v.ok:
            out.ok, out.outcome = False, FAILED
            where = getattr(v, "result_path", None)
            out.error = HostError("metric", f"on-device validation failed: {_metric_text(v)}",
                                  f"details in {where}" if where else None)

    def _roll_back_canary(self, config: ProjectConfig, device: DeviceSpec, o: HostResult, options: DeployOptions) -> None:
        """Put a canary that switched back on the release it had before (none: no current)."""
        if o.ok or o.deploy is None or not o.deploy.switched:
            return  # passed, or not changed by this rollout (read back from the device): nothing to undo
        from .deploy import rollback

        try:
            with connect(with_timeout(device, options.connect_timeout), config,
                         accept_new_host_key=options.accept_new_host_key) as t:
                rb = rollback(t, to=o.deploy.previous, allow_none=True, lock_timeout=options.lock_timeout)
            record_rollback(project_runs(config), rb)
            o.outcome, o.release = ROLLED_BACK, rb.to_release
            o.summary = f"back on {rb.to_release or 'no release (none before)'}" + (f"; {o.summary}" if o.summary else "")
        except EdgekitError as exc:
            if o.error is not None:
                o.error.message += f"; ROLLBACK FAILED: {exc.message}"
        o.ok = False

    # ------------------------------------------------------------------------------------------
    # validate, status, rollback, doctor
    # ------------------------------------------------------------------------------------------
    def validate(self, config: ProjectConfig, hosts: Sequence[DeviceSpec], options: ValidateOptions) -> Iterator[HostResult]:
        def one(device: DeviceSpec) -> HostResult:
            out = HostResult(device.name, "validate", FAILED, False)
            try:
                v = self._validator()(config, with_timeout(device, options.connect_timeout), duration=options.duration,
                                      threads=options.threads, repeat=options.repeat, power=options.power,
                                      accept_new_host_key=options.accept_new_host_key, runs_dir=options.runs_dir,
                                      max_result_mb=options.max_result_mb, quick=options.quick)
            except EdgekitError as exc:
                out.error = HostError.from_exception(exc)
                out.validation = exc.details.get("result")
                return out
            out.validation, out.release, out.summary = v, v.release_id, validation_summary(v)
            out.ok = bool(v.ok)
            out.outcome = OK if v.ok else FAILED
            if not v.ok:
                out.error = HostError("metric", f"device '{device.name}': {_metric_text(v)}", f"details in {v.result_path}")
            return out

        return fan_out(hosts, "validate", one, options.max_parallel)

    def status(self, config: ProjectConfig, hosts: Sequence[DeviceSpec], *, max_parallel: int,
               accept_new_host_key: bool = False, connect_timeout: Optional[float] = None) -> Iterator[HostResult]:
        from .deploy import status

        def one(device: DeviceSpec) -> HostResult:
            with connect(with_timeout(device, connect_timeout), config, accept_new_host_key=accept_new_host_key) as t:
                st = status(t)
            lock = f"; LOCKED by {st.lock.get('host', '?')}" if st.lock else ""
            return HostResult(device.name, "status", OK, True, release=st.current, previous=st.previous, data=st,
                              summary=f"{len(st.releases)} release(s){lock}")

        return fan_out(hosts, "status", one, max_parallel)

    def rollback(self, config: ProjectConfig, hosts: Sequence[DeviceSpec], *, max_parallel: int, to: Optional[str] = None,
                 lock_timeout: float = 60.0, accept_new_host_key: bool = False,
                 connect_timeout: Optional[float] = None) -> Iterator[HostResult]:
        from .deploy import rollback

        def one(device: DeviceSpec) -> HostResult:
            with connect(with_timeout(device, connect_timeout), config, accept_new_host_key=accept_new_host_key) as t:
                rb = rollback(t, to=to, lock_timeout=lock_timeout)
            record_rollback(project_runs(config), rb)
            return HostResult(device.name, "rollback", ROLLED_BACK, True, release=rb.to_release,
                              previous=rb.from_release, data=rb, summary=f"from {rb.from_release or '-'}")

        return fan_out(hosts, "rollback", one, max_parallel)

    def doctor(self, config: ProjectConfig, hosts: Sequence[DeviceSpec], *, max_parallel: int,
               accept_new_host_key: bool = False, connect_timeout: Optional[float] = None) -> Iterator[HostResult]:
        from .doctor import doctor_device

        def one(device: DeviceSpec) -> HostResult:
            rep = doctor_device(config, with_timeout(device, connect_timeout), accept_new_host_key=accept_new_host_key)
            warn = len(rep.warnings)
            out = HostResult(device.name, "doctor", OK if rep.ok else FAILED, rep.ok, data=rep,
                             summary=f"{len(rep.checks)} check(s), {warn} warning(s), {len(rep.failures)} failed")
            if not rep.ok:
                out.error = HostError("device", "; ".join(c.message for c in rep.failures),
                                      f"edgekit doctor -d {device.name} shows every check")
            return out

        return fan_out(hosts, "doctor", one, max_parallel)


def _not_attempted(hosts: Sequence[DeviceSpec], action: str, phase: str, why: str) -> List[HostResult]:
    return [HostResult(h.name, action, NOT_ATTEMPTED, False, phase=phase,
                       error=HostError("not_attempted", f"rollout stopped: {why}", "fix the failure, then rerun with --retry-failed"))
            for h in hosts]


def _metric_text(v: Any) -> str:
    m = getattr(v, "metric", None) or {}
    if m:
        return f"{m.get('name')} = {m.get('value')} vs threshold {m.get('threshold')}"
    err = getattr(v, "error", None) or {}
    return str(err.get("message", "not ok")) if isinstance(err, dict) else "not ok"
