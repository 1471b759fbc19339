"""Jetson's ``tegrastats``, streamed: one process for the whole run, its latest line parsed."""
import re
import shutil
import subprocess
import threading
import time
from typing import Any, Dict, List, Optional

from . import Reading, Sampler, SamplerUnavailable, SensorError
from .jetson import jetson_scope_note, rails_reading

_TEGRA_RAIL = re.compile(
    r"(?:^|\s)([A-Za-z][A-Za-z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?:/(\d+)(?:mW)?)?(?=\s|$)")


class TegrastatsSampler(Sampler):
    """Jetson ``tegrastats``: rail fields ``NAME instant/average`` in mW, with or without the
    ``mW`` unit (JetPack 4 prints ``POM_5V_IN 2545/2547``, JetPack 5/6 ``VDD_IN 5263mW/5263mW``,
    Jetson Linux r39 a third figure ``VDD_GPU_SOC 2792mW/2792mW/2792mW``). Only the first,
    instantaneous figure is used: the others are running statistics over tegrastats' lifetime."""

    name = "tegrastats"
    auto_rank = 60
    scope = "board input"
    method = "power integral"
    reads = "tegrastats --interval MS (rail fields NAME mW/mW)"

    def __init__(self, *args, **kwargs):
        Sampler.__init__(self, *args, **kwargs)
        self._proc = None  # type: Any
        self._line = None  # type: Optional[str]
        self._line_lock = threading.Lock()
        self._reader = None  # type: Optional[threading.Thread]

    def _argv(self):
        # type: () -> List[str]
        return ["tegrastats", "--interval", str(max(10, int(1000.0 / max(self.rate_hz, 1e-3))))]

    def probe(self):
        if not self.injected_runner:
            if shutil.which("tegrastats") is None:
                raise SamplerUnavailable("tegrastats is not on PATH (it ships with Jetson Linux)")
            self._start_stream()
        try:
            reading = self.sample()
        except (SensorError, ValueError, OSError) as exc:
            self.close()
            raise SamplerUnavailable("tegrastats gives no power rails: %s" % exc)
        self.scope, self.total_rail = reading["scope"], reading["total_rail"]
        self.scope_note = jetson_scope_note(reading)

    def _start_stream(self):
        # type: () -> None
        try:
            self._proc = subprocess.Popen(self._argv(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                          universal_newlines=True, bufsize=1)
        except OSError as exc:
            raise SamplerUnavailable("cannot start tegrastats: %s" % (exc.strerror or exc))
        self._reader = threading.Thread(target=self._pump, name="edgekit-tegrastats", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and self._line is None and self._proc.poll() is None:
            time.sleep(0.01)

    def _pump(self):
        # type: () -> None
        for line in self._proc.stdout:
            if line.strip():
                with self._line_lock:
                    self._line = line

    def read(self):
        if self.injected_runner:
            return self.command_runner(self._argv())
        with self._line_lock:
            line = self._line
        if self._proc is not None and self._proc.poll() is not None:
            raise SensorError("tegrastats exited with %s" % self._proc.returncode)
        if line is None:
            raise SensorError("tegrastats printed nothing")
        return line

    @staticmethod
    def parse(raw):
        # type: (str) -> Reading
        """The last non-empty line of ``raw`` is parsed."""
        lines = [ln for ln in str(raw).splitlines() if ln.strip()]
        if not lines:
            raise ValueError("empty tegrastats output")
        rails = {}  # type: Dict[str, float]
        for m in _TEGRA_RAIL.finditer(lines[-1]):
            rails[m.group(1)] = int(m.group(2)) / 1000.0
        if not rails:
            raise ValueError("no power rail fields in %r" % lines[-1][:80])
        return rails_reading(rails)

    def close(self):
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:  # pragma: no cover
                proc.kill()
