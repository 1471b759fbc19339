"""Validate the deployed release on a device: run runner.py there, fetch its JSON, keep it in runs/.

The runner does the measuring (see ``edgekit/device/runner.py``); this module only drives it over a
transport, stores the result as ``runs/<UTC time>-<device>.json`` and returns a value. A runner
failure (missing runtime, bad model, out of memory) becomes a DeviceError carrying the device's own
message; a metric that misses its threshold is a result with ``ok = False`` (the CLI maps it to
AccuracyError's exit code).
"""
from __future__ import annotations

import contextlib
import json
import os
import posixpath
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from pydantic import ConfigDict, ValidationError

from . import __version__
from .config import DeviceSpec, PowerSpec, ProjectConfig, first_error
from .errors import ConfigError, DeviceError
from .report.schema import RunFields, RunFileError, max_result_bytes, read_result
from .transport import Transport, connect

__all__ = ["RunFields", "ValidationResult", "validate_device", "power_settings", "runner_argv", "runs_directory"]

QUICK_DURATION_S = 0.25
QUICK_WARMUP = 2
"""``--quick``: one short window after two warm-up runs; enough to prove the release runs and meets
its metric, not for latency figures to compare."""
RUNNER_EXIT_METRIC = 3
"""runner.py's exit status when the metric missed its threshold (a result, not a failure)."""
OUTPUT_LIMIT = 64 * 1024
"""Of the runner's stdout and of its stderr the host keeps the first and the last this many bytes."""
BOUNDED = (Path(__file__).parent / "device" / "bounded.py").read_text(encoding="utf-8")
"""The device-side wrapper that cuts the runner's output there (see edgekit/device/bounded.py)."""
SIZE_OF = ("import os,stat,sys\ntry:\n st=os.lstat(sys.argv[1])\nexcept OSError:\n print(-1)\nelse:\n"
           " print(st.st_size if stat.S_ISREG(st.st_mode) else -2)")
"""Size of the result file, -1 when missing, -2 when not a regular file (a link to /dev/zero)."""


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
    from .transport.inventory import safe_filename

    return f"{when.strftime('%Y%m%dT%H%M%SZ')}-{safe_filename(device)}.json"


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


def _fetch_result(conn: Transport, spec: DeviceSpec, remote_out: str, proc: Any, limit: int) -> Dict[str, Any]:
    """The runner's result, checked (size first, on the device; then JSON, depth, schema)."""
    def no_result() -> DeviceError:
        return DeviceError(f"device '{spec.name}': the runner wrote no result (exit {proc.returncode}): "
                           f"{_tail(proc.stderr or proc.stdout)}",
                           hint=f"check the interpreter '{device_python(spec)}' with: edgekit doctor --device {spec.name}")

    probe = conn.run([device_python(spec), "-c", SIZE_OF, remote_out], timeout=60, cwd="/")
    size = _int(probe.stdout) if probe.ok else None
    if size == -2:
        raise DeviceError(f"device '{spec.name}': the runner's result {remote_out} is not a regular file; not fetched")
    if size is None or size < 0:
        raise no_result()
    if size > limit:
        raise DeviceError(f"device '{spec.name}': the runner's result is {size / 1e6:.1f} MB, over the "
                          f"{limit / 1e6:g} MB limit; not fetched",
                          hint="raise the limit with --max-result-mb or EDGEKIT_MAX_RESULT_MB if the release is trusted")
    # Fetched into a private temporary directory, removed whatever happens: runs/ only ever gets a checked file.
    with tempfile.TemporaryDirectory(prefix=".edgekit-fetch-") as tmp:
        local = Path(tmp) / "result.json"
        try:
            conn.get(remote_out, local)
        except (DeviceError, OSError):
            raise no_result() from None
        try:
            return read_result(local, limit)  # the size again: the device may have lied
        except RunFileError as exc:
            raise DeviceError(f"device '{spec.name}': the runner's result is not a valid result file: {exc}",
                              hint="the release's runner.py is not the one edgekit ships; redeploy it") from None


def _int(text: str) -> Optional[int]:
    try:
        return int(text.strip())
    except ValueError:
        return None


def _store_run(folder: Path, device: str, data: Dict[str, Any]) -> Path:
    """Write ``runs/<time>-<device>.json`` atomically: a temporary file, flushed, renamed into place.
    A failure at any point leaves no file, never an empty or half-written one."""
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".run-", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        local = _unique(folder / run_file_name(device))
        os.replace(tmp, local)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return local


def validate_device(config: ProjectConfig, device: Union[str, DeviceSpec], *, duration: float = 2.0,
                    threads: Optional[int] = None, repeat: int = 1, power: Union[str, PowerSpec, None] = None,
                    transport: Optional[Transport] = None, accept_new_host_key: bool = False,
                    runs_dir: Union[Path, str, None] = None, warmup: Optional[int] = None,
                    runner_args: Optional[List[str]] = None, timeout: Optional[float] = None,
                    max_result_mb: Optional[float] = None, quick: bool = False) -> ValidationResult:
    """Run the current release's runner on ``device`` and return its result.

    ``power``: a sampler name ('none' turns sampling off) with the rest from edgekit.toml's [power],
    or whole settings (:func:`power_settings`); None uses [power] as it is (sampler 'auto' unless
    the file says otherwise).
    ``runner_args`` passes further runner flags (``--sysfs-root``...).
    ``max_result_mb`` bounds the result JSON fetched from the device (default ``$EDGEKIT_MAX_RESULT_MB``,
    else 32 MB); a larger or malformed one is refused and nothing is stored.
    ``quick`` times one short window (QUICK_DURATION_S, QUICK_WARMUP warm-up runs, no idle baseline).
    Raises DeviceError when nothing is deployed or the runner failed; the run is kept in runs/ either way
    when the runner wrote a result.
    """
    spec = config.device(device) if isinstance(device, str) else device
    if duration <= 0 or repeat < 1:
        raise DeviceError("--duration must be > 0 and --repeat at least 1")
    settings = power if isinstance(power, PowerSpec) else power_settings(config, sampler=power)
    if quick:
        duration, repeat = min(duration, QUICK_DURATION_S), 1
        warmup = QUICK_WARMUP if warmup is None else warmup
        settings = settings.model_copy(update={"idle_s": 0.0})
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
        # The runner is a bundle's code: its output is cut to head and tail on the device itself.
        wrapped = [device_python(spec), "-c", BOUNDED, str(OUTPUT_LIMIT), repr(float(limit)), "--", *argv]
        proc = conn.run(wrapped, timeout=limit + 30, cwd="/")
        try:
            data = _fetch_result(conn, spec, remote_out, proc, max_result_bytes(max_result_mb))
        finally:
            conn.run(["rm", "-f", remote_out], timeout=60, cwd="/")
    finally:
        if own:
            conn.close()
    data["host"] = {"device": spec.name, "device_target": spec.target, "transport": spec.transport,
                    "python": device_python(spec), "edgekit_version": __version__, "runner_exit": proc.returncode,
                    "collected": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    local = _store_run(runs_directory(config, runs_dir), spec.name, data)
    result = ValidationResult.from_run(spec.name, data, local)
    if result.error:
        raise DeviceError(f"device '{spec.name}': {result.error.get('message', 'runner failed')}",
                          hint=result.error.get("hint"), result=result)
    if proc.returncode not in (0, RUNNER_EXIT_METRIC):
        raise DeviceError(f"device '{spec.name}': runner exited {proc.returncode}: {_tail(proc.stderr)}", result=result)
    return result
