"""The tegrastats sampler's real streaming path: a ``tegrastats`` executable on PATH (a stand-in
that prints a captured Jetson Orin Nano line at the requested --interval, as the real tool does),
read through a pipe by the sampler's reader thread. The parser tests inject a command runner and
never start a process; this runs the subprocess, the pump thread, and the shutdown."""
from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any, Dict

import pytest

from edgekit.device import power

CASES = Path(__file__).parent / "power_cases"
FAKE = r'''#!{python}
import argparse, os, sys, time
p = argparse.ArgumentParser(); p.add_argument("--interval", type=int, required=True)
a = p.parse_args()
open({pidfile!r}, "a").write("%d %d\n" % (os.getpid(), a.interval))
line = {line!r}
for n in range({lines}):
    sys.stdout.write(line + "\n"); sys.stdout.flush()
    time.sleep(a.interval / 1000.0)
sys.exit(1)
'''


def fake_tegrastats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: int = 100000) -> Dict[str, Any]:
    case = json.loads((CASES / "tegrastats-orin-nano-jp6.json").read_text())
    bindir = tmp_path / "bin"
    bindir.mkdir()
    pidfile = tmp_path / "tegrastats.pid"
    exe = bindir / "tegrastats"
    exe.write_text(FAKE.format(python=sys.executable, pidfile=str(pidfile), line=case["input"].splitlines()[-1],
                               lines=lines))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return {"case": case, "pidfile": pidfile}


def window(seconds: float) -> Any:
    def run() -> Dict[str, Any]:
        time.sleep(seconds)
        return {"iterations": 100}
    return run


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_streams_tegrastats_and_stops_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_tegrastats(tmp_path, monkeypatch)
    _, p = power.measure(window(0.6), sampler="tegrastats", rate_hz=20, idle_s=0.2)
    watts = fake["case"]["expected"]["power_w"]
    assert p["sampler"] == "tegrastats" and p["is_estimate"] is False and p["available"] is not False
    assert p["mean_power_w"] == pytest.approx(watts, rel=1e-3) and p["idle_power_w"] == pytest.approx(watts, rel=1e-3)
    assert p["energy_j"] == pytest.approx(watts * p["window_s"], rel=0.05)
    assert p["samples"] >= 5
    # the sampler asked tegrastats for its own rate, and the process is gone afterwards
    (entry,) = fake["pidfile"].read_text().split("\n")[:1]
    pid, interval = (int(x) for x in entry.split())
    assert interval == 50
    deadline = time.monotonic() + 3
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(pid)


def test_tegrastats_exiting_mid_run_keeps_the_samples_and_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 20 lines at 50 ms: about 1 s of output, then the tool exits while the window still runs
    fake_tegrastats(tmp_path, monkeypatch, lines=20)
    _, p = power.measure(window(1.6), sampler="tegrastats", rate_hz=20, idle_s=0.2)
    assert p["sampler"] == "tegrastats" and p["samples"] >= 3
    assert any("stopped answering" in w and "tegrastats exited" in w for w in p["warnings"]), p["warnings"]
    assert 0.2 < p["coverage"] < 0.9  # part of the window was covered, and the result says how much


def test_no_tegrastats_on_path_falls_back_to_a_labelled_estimate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    _, p = power.measure(window(0.2), sampler="tegrastats", rate_hz=10, idle_s=0.1)
    assert p["sampler"] == "estimate" and p["is_estimate"] is True and p["requested"] == "tegrastats"
    assert "tegrastats is not on PATH" in p["reason"]
