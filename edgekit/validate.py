"""Validate the deployed release on a device: run runner.py there, fetch its JSON, keep it in runs/.

The runner does the measuring (see ``edgekit/device/runner.py``); this module only drives it over a
transport, stores the result as ``runs/<UTC time>-<device>.json`` and returns a value. A runner
failure (missing runtime, bad model, out of memory) becomes a DeviceError carrying the device's own
message; a metric that misses its threshold is a result with ``ok = False`` (the CLI maps it to
AccuracyError's exit code).
"""
from __future__ import annotations

import json
import posixpath
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import __version__
from .config import DeviceSpec, PowerSpec, ProjectConfig, first_error
from .errors import ConfigError, DeviceError
from .transport import Transport, connect

RUNNER_EXIT_METRIC = 3
"""runner.py's exit status when the metric missed its threshold (a result, not a failure)."""


class RunFields(BaseModel):
    """What one validation run reports; ``ValidationResult`` and the report's ``RunRecord`` share it."""

    device: str
    release_id: Optional[str] = None
    target: Optional[str] = None
    ok: bool = False
    metric: Dict[str, Any] = Field(default_factory=dict)
    """The gating metric: name, value, threshold, passed (plus n/min where they exist)."""
    metrics: Dict[str, Any] = Field(default_factory=dict)
    """Every agreement figure: top1, topK, cosine, psnr_db, max_abs, max_rel (and the task metrics in use)."""
    guard: Optional[Dict[str, Any]] = None
    """The built-in guards on the device's outputs: passed, findings naming output and slice, per-output figures."""
    latency: Dict[str, Any] = Field(default_factory=dict)
    power: Optional[Dict[str, Any]] = None
    memory: Dict[str, Any] = Field(default_factory=dict)
    runtime: Dict[str, Any] = Field(default_factory=dict)
    """Which runtime and execution provider really ran (``provider``, ``node_providers``)."""
    versions: Dict[str, Any] = Field(default_factory=dict)
    device_facts: Dict[str, Any] = Field(default_factory=dict)
    error: Optional[Dict[str, Any]] = None


class ValidationResult(RunFields):
    model_config = ConfigDict(extra="forbid")

    ok: bool
    result_path: Path

    @classmethod
    def from_run(cls, device: str, data: Dict[str, Any], path: Path) -> "ValidationResult":
        return cls(device=device, release_id=data.get("release_id"), target=data.get("target"),
                   ok=bool(data.get("ok")), metric=data.get("metric") or {}, metrics=data.get("metrics") or {},
                   guard=data.get("guard") if isinstance(data.get("guard"), dict) else None,
                   latency=data.get("latency") or {}, power=data.get("power"), memory=data.get("memory") or {},
                   runtime=data.get("runtime") or {}, versions=data.get("versions") or {},
                   device_facts=data.get("device") or {}, result_path=path, error=data.get("error"))


def runs_directory(config: ProjectConfig, runs_dir: Union[Path, str, None] = None) -> Path:
    """``runs/`` beside edgekit.toml unless given; a relative path is relative to the config's directory."""
    return config.resolve(runs_dir if runs_dir is not None else "runs")  # type: ignore[return-value]


def run_file_name(device: str, when: Optional[datetime] = None) -> str:
    when = when or datetime.now(timezone.utc)
    return f"{when.strftime('%Y%m%dT%H%M%SZ')}-{device}.json"


def device_python(spec: DeviceSpec) -> str:
    """The device's interpreter. A local device that names none runs this very interpreter: it is the one
    edgekit was installed into, so it has numpy and onnxruntime, where a bare ``python3`` on PATH may not."""
    if spec.transport == "local" and "python" not in spec.model_fields_set:
        return sys.executable
    return spec.python


def power_settings(config: ProjectConfig, *, sampler: Optional[str] = None, rate_hz: Optional[float] = None,
                   idle_s: Optional[float] = None, requests_per_s: Optional[float] = None,
                   grid_g_per_kwh: Optional[float] = None) -> PowerSpec:
    """edgekit.toml's [power], with what the command line gave on top (checked by the same schema)."""
    given = {k: v for k, v in dict(sampler=sampler, rate_hz=rate_hz, idle_s=idle_s, requests_per_s=requests_per_s,
                                   grid_g_per_kwh=grid_g_per_kwh).items() if v is not None}
    try:
        return PowerSpec.model_validate({**config.power.model_dump(), **given})
    except ValidationError as exc:
        raise ConfigError(first_error(exc, label="power option")) from None


def power_argv(power: PowerSpec) -> List[str]:
    """The runner's flags for ``power`` (none when sampling is off). Values equal to the defaults,
    which are the runner's own, are left out: a release's runner from an older edgekit that lacks
    a newer flag still runs."""
    if power.sampler == "none":
        return []
    argv = ["--power", power.sampler]
    defaults = PowerSpec()
    for flag, field in (("--power-rate", "rate_hz"), ("--idle", "idle_s"), ("--requests-per-s", "requests_per_s"),
                        ("--grid-intensity", "grid_g_per_kwh")):
        if getattr(power, field) != getattr(defaults, field):
            argv += [flag, repr(float(getattr(power, field)))]
    return argv


def runner_argv(spec: DeviceSpec, current: str, out: str, *, duration: float, threads: Optional[int], repeat: int,
                warmup: Optional[int], power: Optional[PowerSpec], extra: Optional[List[str]] = None) -> List[str]:
    argv = [device_python(spec), posixpath.join(current, "runner.py"), "validate", "--release", current, "--out", out,
            "--duration", repr(float(duration)), "--repeat", str(int(repeat))]
    if threads is not None:
        argv += ["--threads", str(int(threads))]
    if warmup is not None:
        argv += ["--warmup", str(int(warmup))]
    if power is not None:
        argv += power_argv(power)
    return argv + list(extra or [])


def _unique(path: Path) -> Path:
    n = 1
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate


def _tail(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def validate_device(config: ProjectConfig, device: Union[str, DeviceSpec], *, duration: float = 2.0,
                    threads: Optional[int] = None, repeat: int = 1, power: Union[str, PowerSpec, None] = None,
                    transport: Optional[Transport] = None, accept_new_host_key: bool = False,
                    runs_dir: Union[Path, str, None] = None, warmup: Optional[int] = None,
                    runner_args: Optional[List[str]] = None, timeout: Optional[float] = None) -> ValidationResult:
    """Run the current release's runner on ``device`` and return its result.

    ``power``: a sampler name ('none' turns sampling off) with the rest from edgekit.toml's [power],
    or whole settings (:func:`power_settings`); None uses [power] as it is (sampler 'auto' unless
    the file says otherwise).
    ``runner_args`` passes further runner flags (``--sysfs-root``...).
    Raises DeviceError when nothing is deployed or the runner failed; the run is kept in runs/ either way
    when the runner wrote a result.
    """
    spec = config.device(device) if isinstance(device, str) else device
    if duration <= 0 or repeat < 1:
        raise DeviceError("--duration must be > 0 and --repeat at least 1")
    settings = power if isinstance(power, PowerSpec) else power_settings(config, sampler=power)
    own = transport is None
    conn = transport or connect(spec, config, accept_new_host_key=accept_new_host_key)
    try:
        current = conn.path("current")
        # cwd "/": the device directory itself may not exist yet (nothing deployed).
        probe = conn.run(["test", "-f", posixpath.join(current, "runner.py")], timeout=60, cwd="/")
        if not probe.ok:
            raise DeviceError(f"no release deployed on device {spec.name}; run edgekit deploy --device {spec.name} first",
                              hint=f"{current} does not exist or holds no runner.py")
        remote_out = conn.path(".edgekit", f"validate-{uuid.uuid4().hex[:12]}.json")
        argv = runner_argv(spec, current, remote_out, duration=duration, threads=threads, repeat=repeat,
                           warmup=warmup, power=settings, extra=runner_args)
        # First runs on Jetson build TensorRT engines (minutes); power adds idle time around the window.
        limit = timeout if timeout is not None else 600.0 + repeat * duration * 3 + settings.idle_s
        proc = conn.run(argv, timeout=limit, cwd="/")
        folder = runs_directory(config, runs_dir)
        folder.mkdir(parents=True, exist_ok=True)
        local = _unique(folder / run_file_name(spec.name))
        try:
            conn.get(remote_out, local)
        except Exception:
            raise DeviceError(f"device '{spec.name}': the runner wrote no result (exit {proc.returncode}): {_tail(proc.stderr or proc.stdout)}",
                              hint=f"check the interpreter '{device_python(spec)}' with: edgekit doctor --device {spec.name}") from None
        finally:
            conn.run(["rm", "-f", remote_out], timeout=60, cwd="/")
    finally:
        if own:
            conn.close()
    try:
        data = json.loads(local.read_text())
    except ValueError as exc:
        raise DeviceError(f"device '{spec.name}': the runner's result {local} is not valid JSON ({exc})") from None
    data["host"] = {"device": spec.name, "device_target": spec.target, "transport": spec.transport,
                    "python": device_python(spec), "edgekit_version": __version__, "runner_exit": proc.returncode,
                    "collected": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    local.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    result = ValidationResult.from_run(spec.name, data, local)
    if result.error:
        raise DeviceError(f"device '{spec.name}': {result.error.get('message', 'runner failed')}",
                          hint=result.error.get("hint"), result=result)
    if proc.returncode not in (0, RUNNER_EXIT_METRIC):
        raise DeviceError(f"device '{spec.name}': runner exited {proc.returncode}: {_tail(proc.stderr)}", result=result)
    return result
