"""Devices from edgekit.toml and Ansible inventories, and operations on one device or a fleet.

A fleet deploy fans out with bounded concurrency (``deploy.max_parallel``). With ``canary=N`` the
first N devices get the release first and are validated *on the device*; a failed canary stops the
rollout and switches the canary devices back to the release they had. The rest then follow in
batches, each batch gating the next. A partial failure raises FleetError holding every device's
outcome (Fabric's GroupResult/GroupException, as a value).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union, cast

from . import artifact
from .config import DeviceSpec, ProjectConfig
from .deploy import (DEFAULT_LOCK_TIMEOUT_S, DeployResult, DeviceStatus, RollbackResult, deploy, rollback,
                     status, verified_files)
from .errors import ConfigError, DeployError, EdgekitError, FleetError
from .report.releases import record_deploy, record_rollback
from .transport import connect

Validate = Callable[..., Any]
"""``validate(config, device, *, transport=..., duration=..., accept_new_host_key=...)`` returning an
object with ``.ok`` (edgekit.validate.validate_device by default)."""


# ----------------------------------------------------------------------------------------------
# Which devices
# ----------------------------------------------------------------------------------------------
def all_devices(config: ProjectConfig, inventory: Union[Path, str, Sequence[Union[Path, str]], None] = None) -> List[DeviceSpec]:
    """edgekit.toml's devices, then the inventory's (``--inventory``, repeatable, or deploy.inventory)."""
    devices = list(config.devices)
    given = [inventory] if isinstance(inventory, (Path, str)) else list(inventory or [])
    sources = [cast(Path, config.resolve(p)) for p in given or [config.deploy.inventory] if p is not None]
    if sources:
        from .transport.inventory import load_inventory

        source = ", ".join(map(str, sources))
        names = {d.name for d in devices}
        for d in load_inventory(sources).devices():
            if d.name in names:
                raise ConfigError(f"device '{d.name}' is defined both in {config.path} and in {source}",
                                  hint="keep one definition (the inventory's, or edgekit.toml's)")
            devices.append(d)
    return devices


def select_devices(config: ProjectConfig, *, device: Optional[str] = None, group: Optional[str] = None,
                   inventory: Union[Path, str, Sequence[Union[Path, str]], None] = None) -> List[DeviceSpec]:
    if (device is None) == (group is None):
        raise ConfigError("give exactly one of --device NAME or --group NAME")
    devices = all_devices(config, inventory)
    if device is not None:
        for d in devices:
            if d.name == device:
                return [d]
        known = ", ".join(d.name for d in devices) or "none"
        given = [inventory] if isinstance(inventory, (Path, str)) else list(inventory or [])
        where = f"{config.path}" + "".join(f" or {p}" for p in given)
        raise ConfigError(f"{where}: no device named '{device}' (devices: {known})")
    chosen = [d for d in devices if group == "all" or group in d.groups]
    if not chosen:
        groups = sorted({g for d in devices for g in d.groups})
        raise ConfigError(f"{config.path}: no device in group '{group}' (groups: {', '.join(groups) or 'none'}; 'all' = every device)")
    return chosen


def bundle_for(config: ProjectConfig, device: DeviceSpec, dist: Union[Path, str, None] = None,
               target: Optional[str] = None, _profiles: Optional[Dict[str, str]] = None) -> Path:
    """``dist/<model>/<target>/`` for the device, its target resolved through the profiles."""
    from .targets import resolve

    name = target or device.target
    if _profiles is None or name not in _profiles:  # a fleet resolves each target name once
        resolved = resolve(name, project_dirs=config.target_dirs()).name
        if _profiles is not None:
            _profiles[name] = resolved
    profile_name = _profiles[name] if _profiles is not None else resolved
    bundle = artifact.bundle_dir(cast(Path, config.resolve(dist or "dist")), config.model.name, profile_name)
    if not (bundle / artifact.MANIFEST).is_file():
        raise DeployError(f"no bundle at {bundle} for device '{device.name}'",
                          hint=f"run 'edgekit build --target {profile_name}' first")
    manifest = artifact.read_manifest(bundle)
    if manifest["target"] != profile_name:
        raise DeployError(f"{bundle}: the manifest is for target '{manifest['target']}', not '{profile_name}'")
    return bundle


# ----------------------------------------------------------------------------------------------
# One device
# ----------------------------------------------------------------------------------------------
def deploy_device(config: ProjectConfig, device: DeviceSpec, *, dist: Union[Path, str, None] = None,
                  target: Optional[str] = None, accept_new_host_key: bool = False,
                  lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> DeployResult:
    bundle = bundle_for(config, device, dist, target)
    with connect(device, config, accept_new_host_key=accept_new_host_key) as t:
        res = deploy(t, bundle, keep_releases=config.deploy.keep_releases, lock_timeout=lock_timeout)
    record_deploy(_runs(config), res)  # the report's release log (what is current where)
    return res


def rollback_device(config: ProjectConfig, device: DeviceSpec, *, to: Optional[str] = None, allow_none: bool = False,
                    accept_new_host_key: bool = False, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> RollbackResult:
    with connect(device, config, accept_new_host_key=accept_new_host_key) as t:
        res = rollback(t, to=to, allow_none=allow_none, lock_timeout=lock_timeout)
    record_rollback(_runs(config), res)
    return res


def _runs(config: ProjectConfig) -> Path:
    """Where validate stores runs, and the report reads them and the release log."""
    return cast(Path, config.resolve("runs"))


def status_device(config: ProjectConfig, device: DeviceSpec, *, accept_new_host_key: bool = False) -> DeviceStatus:
    with connect(device, config, accept_new_host_key=accept_new_host_key) as t:
        return status(t)


# ----------------------------------------------------------------------------------------------
# A fleet
# ----------------------------------------------------------------------------------------------
@dataclass
class DeviceOutcome:
    device: str
    phase: str
    """"canary", "batch 1", "batch 2"... or "all" without a canary."""
    state: str
    """deployed | validated | failed | rolled back | not attempted"""
    ok: bool
    deploy: Optional[DeployResult] = None
    validation_ok: Optional[bool] = None
    validation_result: Optional[str] = None
    """Path of the run file the on-device validation wrote (runs/...json)."""
    rolled_back_to: Optional[str] = None
    error: Optional[str] = None
    seconds: float = 0.0


@dataclass
class FleetResult:
    release_ids: Dict[str, str]
    """device -> release id deployed (or attempted)."""
    results: Dict[str, DeviceOutcome] = field(default_factory=dict)
    canary: List[str] = field(default_factory=list)
    stopped: Optional[str] = None
    """Why the rollout stopped early, if it did."""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results.values())

    @property
    def failed(self) -> List[str]:
        return [n for n, r in self.results.items() if not r.ok]


def _default_validate() -> Validate:
    from .validate import validate_device  # lazily: it pulls in the run-file machinery

    return validate_device


def deploy_fleet(config: ProjectConfig, devices: Sequence[DeviceSpec], *, dist: Union[Path, str, None] = None,
                 target: Optional[str] = None, canary: int = 0, max_parallel: Optional[int] = None,
                 batch_size: Optional[int] = None, validate: Optional[Validate] = None, duration: float = 1.0,
                 accept_new_host_key: bool = False, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> FleetResult:
    """Deploy to ``devices`` (see the module docstring); raises FleetError unless every device succeeded."""
    t0 = time.perf_counter()
    if canary < 0 or canary > len(devices):
        raise ConfigError(f"--canary {canary}: expected 0..{len(devices)} (devices selected: {len(devices)})")
    parallel = max(1, max_parallel or config.deploy.max_parallel)
    # Every bundle is found and checked (once each) before any device is touched: a missing or
    # damaged build fails the whole command.
    profiles: Dict[str, str] = {}
    bundles = {d.name: bundle_for(config, d, dist, target, profiles) for d in devices}
    checked = {b: verified_files(b) for b in set(bundles.values())}
    result = FleetResult({n: str(checked[b][0]["release_id"]) for n, b in bundles.items()})
    check = (validate or _default_validate()) if canary else None

    def one(device: DeviceSpec, phase: str) -> DeviceOutcome:
        start = time.perf_counter()
        out = DeviceOutcome(device.name, phase, "failed", False)
        try:
            with connect(device, config, accept_new_host_key=accept_new_host_key) as t:
                bundle = bundles[device.name]
                out.deploy = deploy(t, bundle, keep_releases=config.deploy.keep_releases, lock_timeout=lock_timeout,
                                    verified=checked[bundle])
                record_deploy(_runs(config), out.deploy)
                out.state, out.ok = "deployed", True
                if check is not None and phase == "canary":
                    v = check(config, device, transport=t, duration=duration, accept_new_host_key=accept_new_host_key)
                    out.validation_ok = bool(v.ok)
                    out.validation_result = str(getattr(v, "result_path", "") or "") or None
                    out.state, out.ok = ("validated", True) if v.ok else ("failed", False)
                    if not v.ok:
                        out.error = f"on-device validation failed: {_metric_text(v)}"
        except Exception as exc:  # one device's surprise must not lose the other devices' outcomes
            out.ok, out.state = False, "failed"
            out.error = exc.message if isinstance(exc, EdgekitError) else f"unexpected {type(exc).__name__}: {exc}"
            if out.deploy is None and isinstance(exc, EdgekitError):
                # A deploy that failed after (or maybe after) its switch still says so: the rollback
                # below depends on it (a canary that switched is always rolled back).
                failed = exc.details.get("result")
                out.deploy = failed if isinstance(failed, DeployResult) else None
            if check is not None and phase == "canary" and out.deploy is not None:
                out.validation_ok = False
        out.seconds = round(time.perf_counter() - start, 3)
        return out

    def run_wave(wave: Sequence[DeviceSpec], phase: str) -> List[DeviceOutcome]:
        with ThreadPoolExecutor(max_workers=min(parallel, max(1, len(wave))), thread_name_prefix="edgekit-deploy") as pool:
            outcomes = list(pool.map(lambda d: one(d, phase), wave))
        for o in outcomes:
            result.results[o.device] = o
        return outcomes

    def skip_rest(rest: Sequence[DeviceSpec], phase: str) -> None:
        for d in rest:
            result.results[d.name] = DeviceOutcome(d.name, phase, "not attempted", False,
                                                   error=f"rollout stopped: {result.stopped}")

    if canary:
        canaries, rest = list(devices[:canary]), list(devices[canary:])
        result.canary = [d.name for d in canaries]
        outcomes = run_wave(canaries, "canary")
        if not all(o.ok for o in outcomes):
            bad = ", ".join(o.device for o in outcomes if not o.ok)
            result.stopped = f"canary failed on {bad}"
            _roll_back(config, canaries, result, accept_new_host_key, lock_timeout)
            skip_rest(rest, "after canary")
        else:
            size = max(1, batch_size or parallel)
            for i in range(0, len(rest), size):
                batch, phase = rest[i:i + size], f"batch {i // size + 1}"
                if not all(o.ok for o in run_wave(batch, phase)):
                    result.stopped = f"{phase} failed"
                    skip_rest(rest[i + size:], "after " + phase)
                    break
    else:
        run_wave(list(devices), "all")
    result.seconds = round(time.perf_counter() - t0, 3)
    if not result.ok:
        failed = [n for n in result.failed if result.results[n].state != "not attempted"]
        skipped = len(result.failed) - len(failed)
        raise FleetError(f"deploy failed on {len(failed)} of {len(devices)} device(s): {', '.join(failed)}"
                         + (f"; {skipped} not attempted" if skipped else "")
                         + (f" ({result.stopped})" if result.stopped else ""), result,
                         hint="each failed device's error says which release it runs now (read back from the device); "
                              "see the table (or --json) per device")
    return result


def _metric_text(v: Any) -> str:
    m = getattr(v, "metric", None) or {}
    if m:
        return f"{m.get('name')} = {m.get('value')} vs threshold {m.get('threshold')}"
    err = getattr(v, "error", None) or {}
    return str(err.get("message", "not ok")) if isinstance(err, dict) else "not ok"


def _roll_back(config: ProjectConfig, canaries: Sequence[DeviceSpec], result: FleetResult,
               accept_new_host_key: bool, lock_timeout: float) -> None:
    """Put every canary that switched back on the release it had before (none: no current)."""
    for d in canaries:
        o = result.results[d.name]
        if o.deploy is None or not o.deploy.switched:
            continue  # not changed by this rollout (read back from the device): nothing to undo
        try:
            rb = rollback_device(config, d, to=o.deploy.previous, allow_none=True,
                                 accept_new_host_key=accept_new_host_key, lock_timeout=lock_timeout)
            o.state, o.rolled_back_to = "rolled back", rb.to_release or "(none)"
        except EdgekitError as exc:
            o.error = f"{o.error}; ROLLBACK FAILED: {exc.message}"
        o.ok = False
