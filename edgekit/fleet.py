"""Devices from edgekit.toml and Ansible inventories, and operations on one device or a fleet.

A fleet deploy fans out with bounded concurrency (``deploy.max_parallel``) through an engine (the
built-in one, edgekit/fleet_engine.py, unless another is given). With a canary (a count or device
names) those devices get the release first and are validated *on the device*; a failed canary
stops the rollout and is switched back to the release it had. The rest then follow in batches, each
batch gating the next. Every device's result is a HostResult (edgekit/fleet_results.py); a partial
failure raises FleetError holding the FleetRun (Fabric's GroupResult/GroupException, as a value)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union, cast

from . import artifact
from .config import DeviceSpec, ProjectConfig
from .deploy import DEFAULT_LOCK_TIMEOUT_S, DeployResult, DeviceStatus, RollbackResult, deploy, rollback, status
from .errors import ConfigError, DeployError, FleetError
from .fleet_engine import Validate
from .fleet_results import NOT_ATTEMPTED, DeployOptions, Engine, FleetRun, OnResult, collect
from .report.releases import project_runs, record_deploy, record_rollback
from .transport import connect


# ----------------------------------------------------------------------------------------------
# Which devices
# ----------------------------------------------------------------------------------------------
def all_devices(config: ProjectConfig, inventory: Union[Path, str, Sequence[Union[Path, str]], None] = None) -> List[DeviceSpec]:
    """edgekit.toml's devices, then the inventory's (``--inventory``, repeatable, or deploy.inventory).

    A ``[[devices]]`` entry named like an inventory host adds settings to that host instead of
    defining another device. Precedence, highest first: the command line (``--connect-timeout``),
    the fields the edgekit.toml entry sets, the inventory's host and group vars (as Ansible merges
    them), ~/.ssh/config, the defaults. ``groups`` are the union of both lists.
    """
    given = [inventory] if isinstance(inventory, (Path, str)) else list(inventory or [])
    sources = [cast(Path, config.resolve(p)) for p in given or [config.deploy.inventory] if p is not None]
    listed: Dict[str, DeviceSpec] = {}
    if sources:
        from .transport.inventory import load_inventory

        listed = {d.name: d for d in load_inventory(sources).devices()}
    devices = []
    for i, d in enumerate(config.devices):
        host = listed.pop(d.name, None)
        if host is not None:
            d = merge_device(config, i, host, d)
        elif not d.target:
            where = f" or {', '.join(map(str, sources))}" if sources else ""
            raise ConfigError(f"{config.path}: field 'devices.{i}.target': device '{d.name}' has no target, and no "
                              f"inventory host{where} is named '{d.name}'",
                              hint="set target = \"<profile>\" (edgekit targets lists them), or name an inventory host")
        devices.append(d)
    return devices + list(listed.values())


def merge_device(config: ProjectConfig, index: int, host: DeviceSpec, override: DeviceSpec) -> DeviceSpec:
    """An inventory host with the fields its edgekit.toml entry sets on top (see all_devices)."""
    from pydantic import ValidationError

    from .config import first_error

    data = host.model_dump(exclude_unset=False)
    data.update({k: getattr(override, k) for k in override.model_fields_set if k not in ("name", "groups")})
    data["groups"] = list(dict.fromkeys([*host.groups, *override.groups]))
    try:
        merged = DeviceSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{config.path}: devices.{index} ('{override.name}', merged over the inventory host): "
                          f"{first_error(exc)}") from None
    if not merged.target:
        raise ConfigError(f"device '{merged.name}' has no target: set edgekit_target in the inventory or target "
                          f"in {config.path}")
    return merged


def select_devices(config: ProjectConfig, *, device: Union[str, Sequence[str], None] = None, group: Optional[str] = None,
                   inventory: Union[Path, str, Sequence[Union[Path, str]], None] = None,
                   limit: Optional[Sequence[str]] = None) -> List[DeviceSpec]:
    """The devices a command runs on: ``--device`` names (one or several) or a ``--group`` ('all' for
    every device), narrowed to ``limit`` (``--limit``/``--retry-failed``); with only ``limit``, those
    devices. Order: as the names were given, else as defined."""
    names = [device] if isinstance(device, str) else list(device or [])
    if names and group is not None:
        raise ConfigError("give --device NAME (repeatable) or --group NAME, not both")
    if not names and group is None and limit is None:
        raise ConfigError("give --device NAME (repeatable) or --group NAME ('all' for every device)")
    devices = all_devices(config, inventory)
    by_name = {d.name: d for d in devices}
    given = [inventory] if isinstance(inventory, (Path, str)) else list(inventory or [])
    where = f"{config.path}" + "".join(f" or {p}" for p in given)
    if names:
        unknown = [n for n in names if n not in by_name]
        if unknown:
            known = ", ".join(by_name) or "none"
            raise ConfigError(f"{where}: no device named '{unknown[0]}' (devices: {known})")
        chosen = [by_name[n] for n in dict.fromkeys(names)]
    elif group is not None:
        chosen = [d for d in devices if group == "all" or group in d.groups]
        if not chosen:
            groups = sorted({g for d in devices for g in d.groups})
            raise ConfigError(f"{config.path}: no device in group '{group}' (groups: {', '.join(groups) or 'none'}; 'all' = every device)")
    else:
        chosen = devices
    if limit is not None:
        unknown = [n for n in limit if n not in by_name]
        if unknown:
            raise ConfigError(f"--limit: no device named '{unknown[0]}' in {where}")
        wanted = set(limit)
        chosen = [d for d in chosen if d.name in wanted]
        if not chosen:
            raise ConfigError("--limit/--retry-failed: none of the selected devices is in the list "
                              f"({', '.join(limit) or 'the list is empty'})", hint="nothing to rerun")
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
    record_deploy(project_runs(config), res)  # the report's release log (what is current where)
    return res


def rollback_device(config: ProjectConfig, device: DeviceSpec, *, to: Optional[str] = None, allow_none: bool = False,
                    accept_new_host_key: bool = False, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> RollbackResult:
    with connect(device, config, accept_new_host_key=accept_new_host_key) as t:
        res = rollback(t, to=to, allow_none=allow_none, lock_timeout=lock_timeout)
    record_rollback(project_runs(config), res)
    return res


def status_device(config: ProjectConfig, device: DeviceSpec, *, accept_new_host_key: bool = False) -> DeviceStatus:
    with connect(device, config, accept_new_host_key=accept_new_host_key) as t:
        return status(t)


# ----------------------------------------------------------------------------------------------
# A fleet
# ----------------------------------------------------------------------------------------------
def deploy_fleet(config: ProjectConfig, devices: Sequence[DeviceSpec], *, dist: Union[Path, str, None] = None,
                 target: Optional[str] = None, canary: Union[int, Sequence[str], None] = 0,
                 max_parallel: Optional[int] = None, batch_size: Optional[int] = None, validate: Optional[Validate] = None,
                 duration: float = 1.0, quick: bool = False, accept_new_host_key: bool = False,
                 lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S, connect_timeout: Optional[float] = None,
                 engine: Optional[Engine] = None, on_result: Optional[OnResult] = None) -> FleetRun:
    """Deploy to ``devices`` (see the module docstring) with ``engine`` (the built-in one by default);
    ``on_result`` sees each host's result as it finishes. Raises FleetError, holding the FleetRun,
    unless every device succeeded."""
    t0 = time.perf_counter()
    canaries = choose_canaries(devices, canary)
    options = DeployOptions(canary=canaries, batch_size=batch_size, max_parallel=max(1, max_parallel or config.deploy.max_parallel),
                            duration=duration, quick=quick, lock_timeout=lock_timeout,
                            accept_new_host_key=accept_new_host_key, connect_timeout=connect_timeout)
    # Every bundle is found and checked (once each) before any device is touched: a missing or
    # damaged build fails the whole command.
    profiles: Dict[str, str] = {}
    bundles = {d.name: bundle_for(config, d, dist, target, profiles) for d in devices}
    if engine is None:
        from .fleet_engine import BuiltinEngine

        engine = BuiltinEngine(validate=validate)
    result = collect("deploy", devices, engine.deploy(config, devices, bundles, options), on_result,
                     engine=getattr(engine, "name", "builtin"))
    result.canary = canaries
    result.seconds = round(time.perf_counter() - t0, 3)
    if not result.ok:
        raise fleet_error(result, len(devices))
    return result


def choose_canaries(devices: Sequence[DeviceSpec], canary: Union[int, str, Sequence[str], None]) -> List[str]:
    """``--canary``: a count (the first N devices as selected) or device names (comma-separated or a list)."""
    if canary is None or canary == 0 or canary == [] or canary == ():
        return []
    if isinstance(canary, str):
        canary = int(canary) if canary.strip().isdigit() else [n.strip() for n in canary.split(",") if n.strip()]
    if isinstance(canary, int):
        if canary < 0 or canary > len(devices):
            raise ConfigError(f"--canary {canary}: expected 0..{len(devices)} (devices selected: {len(devices)})")
        return [d.name for d in devices[:canary]]
    names = list(dict.fromkeys(canary))
    known = [d.name for d in devices]
    missing = [n for n in names if n not in known]
    if missing:
        raise ConfigError(f"--canary {','.join(missing)}: not among the selected devices ({', '.join(known)})",
                          hint="name devices of the group (or --device list) being deployed, or give a count")
    return names


def fleet_error(result: FleetRun, total: int) -> FleetError:
    """The FleetError for a run where some hosts did not succeed (its message lists them)."""
    verb = {"deploy": "deploy", "validate": "validation", "status": "status", "rollback": "rollback",
            "doctor": "doctor"}.get(result.action, result.action)
    skipped = [n for n, r in result.results.items() if r.outcome == NOT_ATTEMPTED]
    failed = [n for n in result.failed if n not in skipped]
    return FleetError(f"{verb} failed on {len(failed)} of {total} device(s): {', '.join(failed)}"
                      + (f"; {len(skipped)} not attempted" if skipped else "")
                      + (f" ({result.stopped})" if result.stopped else ""), result,
                      hint="each failed device's line says why; rerun only those with --retry-failed")
