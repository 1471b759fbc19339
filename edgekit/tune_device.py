"""The device half of ``--tune-on``, seen from the host: content-addressed uploads, the one
measuring invocation with its live progress, and the checked result.

On the device everything lives in ``<device dir>/.edgekit/tune/``: ``blobs/<sha256>`` holds each
file once under its own hash (candidate models, the reference outputs, the device code), so a file
the device already holds is never sent again; ``run-<id>/`` holds one run's code copies, plan,
progress and result, and is removed afterwards.
"""
from __future__ import annotations

import contextlib
import json
import posixpath
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from .artifact import sha256_file
from .config import DeviceSpec
from .device_layout import Device
from .errors import DeviceError
from .transport import Transport

TUNE_MODULE = "edgekit.device.tune"
TUNE_DIR = ".edgekit/tune"
OUTPUT_LIMIT = 64 * 1024
FACTS_LIMIT = 1 << 20
RESULT_LIMIT = 16 << 20
PROGRESS_LIMIT = 256 * 1024
POLL_S = 0.5

Say = Callable[[str], None]


@contextlib.contextmanager
def device_code(plugins: Sequence[Path] = ()) -> Iterator[Dict[str, Path]]:
    """The device package as a release holds it (as doctor ships it): {path inside the run
    directory: local file}, valid inside the ``with``."""
    from . import artifact

    with tempfile.TemporaryDirectory(prefix=".edgekit-tune-code-") as tmp:
        root = Path(tmp)
        artifact.copy_device_files(root, plugins)
        yield {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


class TuneLink:
    """One device, reached over its transport, as tuning uses it."""

    def __init__(self, conn: Transport, spec: DeviceSpec, python: str) -> None:
        self.conn, self.spec, self.python = conn, spec, python
        self.dev = Device(conn)
        self.sent = 0
        self.files_sent = 0
        self.files_reused = 0
        self.run_dir = f"{TUNE_DIR}/run-{uuid.uuid4().hex[:12]}"

    @property
    def bytes_sent(self) -> int:
        return self.sent

    def blob(self, sha: str) -> str:
        return f"{TUNE_DIR}/blobs/{sha}"

    def push(self, files: Dict[str, Path], code_names: Sequence[str] = (), data: bool = True) -> Dict[str, str]:
        """Make every file present on the device as ``blobs/<sha256>`` (sending only what is
        missing or damaged), and copy ``code_names`` into this run's directory under their own
        names. Returns {name: device path, relative to the device directory}."""
        sums = {name: sha256_file(path) for name, path in files.items()}
        self.conn.makedirs(f"{TUNE_DIR}/blobs")
        self.conn.makedirs(self.run_dir)
        wanted = sorted({self.blob(s) for s in sums.values()})
        _, have = self.dev.on_device(wanted)
        by_sha = {s: name for name, s in sums.items()}
        missing = [s for s in sorted(by_sha) if have.get(self.blob(s)) != s]
        sent = self.conn.put_many([(files[by_sha[s]], self.conn.path(self.blob(s))) for s in missing])
        if not isinstance(sent, int) or isinstance(sent, bool) or sent < 0:
            raise DeviceError(f"device '{self.spec.name}': the {type(self.conn).__name__} transport's put_many "
                              f"returned {sent!r}, not the bytes it sent")
        self.sent += sent
        copies = [(self.blob(sums[n]), f"{self.run_dir}/{n}") for n in code_names]
        for folder in sorted({posixpath.dirname(dst) for _, dst in copies} - {self.run_dir}):
            self.conn.makedirs(folder)  # the package's subfolders: cp on the device makes none
        _, got = self.dev.on_device(wanted + [dst for _, dst in copies], copies)
        bad = [by_sha[s] for s in by_sha if got.get(self.blob(s)) != s]
        bad += [n for n in code_names if got.get(f"{self.run_dir}/{n}") != sums[n]]
        if bad:
            raise DeviceError(f"device '{self.spec.name}': checksum mismatch on the device after upload: "
                              f"{', '.join(sorted(set(bad)))}", hint="retry; if it repeats, check the device's storage")
        self.files_sent += len(missing)
        if data:
            self.files_reused += len(by_sha) - len(missing)
        return {name: self.blob(sums[name]) for name in files}

    def _bounded(self, argv: List[str], timeout: float) -> Any:
        """``python3 -m edgekit.device.tune ARGV`` in the run directory, output bounded on the device.
        ``-m`` puts the working directory first on sys.path: the shipped package is imported,
        and the command checks it (``--package-root``); ``-B``: no bytecode written beside it."""
        from .validate import BOUNDED

        root = self.conn.path(self.run_dir)
        command = [self.python, "-B", "-m", TUNE_MODULE, *argv, "--package-root", root]
        wrapped = [self.python, "-c", BOUNDED, str(OUTPUT_LIMIT), repr(float(timeout)), "--", *command]
        return self.conn.run(wrapped, timeout=timeout + 30, cwd=root)

    def facts(self, sysfs_root: Optional[str] = None) -> Dict[str, Any]:
        """The device's CPU, features, runtime and sensors (tune facts), parsed with limits."""
        argv = ["facts"]
        if sysfs_root:
            argv += ["--sysfs-root", sysfs_root]
        proc = self._bounded(argv, 120.0)
        text = (proc.stdout or "").strip().splitlines()
        if not proc.ok or not text:
            raise DeviceError(f"device '{self.spec.name}': tune facts failed (exit {proc.returncode}): "
                              f"{_tail(proc.stderr or proc.stdout)}",
                              hint=f"check the device's Python and onnxruntime: edgekit doctor --device {self.spec.name}")
        data = _parse_json(text[-1][:FACTS_LIMIT], f"device '{self.spec.name}': tune facts")
        if not isinstance(data.get("device"), dict) or not isinstance(data.get("runtime"), dict):
            raise DeviceError(f"device '{self.spec.name}': tune facts: expected 'device' and 'runtime' objects")
        return data

    def measure(self, plan: Dict[str, Any], say: Say, timeout: float, sysfs_root: Optional[str] = None) -> Dict[str, Any]:
        """Write the plan, run tune measure once, relay its progress lines live, fetch the result."""
        plan_path = f"{self.run_dir}/plan.json"
        self.conn.write_bytes(plan_path, json.dumps(plan, sort_keys=True).encode())
        out, progress = self.conn.path(self.run_dir, "result.json"), self.conn.path(self.run_dir, "progress.txt")
        argv = ["measure", "--plan", self.conn.path(plan_path), "--out", out, "--progress", progress]
        if sysfs_root:
            argv += ["--sysfs-root", sysfs_root]
        stop = threading.Event()
        poller = threading.Thread(target=self._relay, args=(progress, say, stop), daemon=True)
        poller.start()
        try:
            proc = self._bounded(argv, timeout)
        finally:
            stop.set()
            poller.join(timeout=10)
        self._relay_once(progress, say)
        return self._fetch(out, proc)

    _shown = 0

    def _relay_once(self, progress: str, say: Say) -> None:
        try:
            text = self.conn.read_head(progress, PROGRESS_LIMIT).decode("utf-8", "replace")
        except (OSError, DeviceError):
            return
        lines = text.splitlines()
        complete = lines if text.endswith("\n") else lines[:-1]
        for line in complete[self._shown:]:
            say(f"{self.spec.name}: {line[:300]}")
        self._shown = max(self._shown, len(complete))

    def _relay(self, progress: str, say: Say, stop: threading.Event) -> None:
        while not stop.wait(POLL_S):
            try:
                self._relay_once(progress, say)
            except Exception:  # progress is a courtesy: never let it break the measurement
                return

    def _fetch(self, remote: str, proc: Any) -> Dict[str, Any]:
        from .validate import SIZE_OF

        probe = self.conn.run([self.python, "-c", SIZE_OF, remote], timeout=60, cwd="/")
        try:
            size = int(probe.stdout.strip())
        except ValueError:
            size = -1
        if size == -2:
            raise DeviceError(f"device '{self.spec.name}': the tuning result {remote} is not a regular file; not fetched")
        if size < 0:
            raise DeviceError(f"device '{self.spec.name}': tune wrote no result (exit {proc.returncode}): "
                              f"{_tail(proc.stderr or proc.stdout)}")
        if size > RESULT_LIMIT:
            raise DeviceError(f"device '{self.spec.name}': the tuning result is {size / 1e6:.1f} MB, over the "
                              f"{RESULT_LIMIT / 1e6:g} MB limit; not fetched")
        import tempfile

        with tempfile.TemporaryDirectory(prefix=".edgekit-tune-") as tmp:
            local = Path(tmp) / "result.json"
            self.conn.get(remote, local)
            if local.stat().st_size > RESULT_LIMIT:
                raise DeviceError(f"device '{self.spec.name}': the tuning result grew over the limit; not used")
            return _parse_json(local.read_text(encoding="utf-8", errors="replace"),
                               f"device '{self.spec.name}': the tuning result")

    def cleanup(self) -> None:
        try:
            self.conn.rmtree(self.run_dir)
        except (OSError, DeviceError):
            pass


def _tail(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else "(no output)"


def _parse_json(text: str, what: str) -> Dict[str, Any]:
    """Strict JSON from a device: no NaN/Infinity literals, bounded nesting, an object at the top."""
    def no_constants(name: str) -> None:
        raise ValueError(f"non-standard number {name}")

    try:
        data = json.loads(text, parse_constant=no_constants)
    except (ValueError, RecursionError) as exc:
        raise DeviceError(f"{what} is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise DeviceError(f"{what}: expected a JSON object, got {type(data).__name__}")
    if _depth(data) > 32:
        raise DeviceError(f"{what}: nested deeper than 32 levels")
    return data


def _depth(value: Any, level: int = 0) -> int:
    if level > 32:
        return level
    if isinstance(value, dict):
        return max([_depth(v, level + 1) for v in value.values()] or [level + 1])
    if isinstance(value, list):
        return max([_depth(v, level + 1) for v in value] or [level + 1])
    return level


def open_link(conn: Transport, spec: DeviceSpec) -> TuneLink:
    from .validate import device_python

    return TuneLink(conn, spec, device_python(spec))



def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
