"""Every device command on a group, against real sshd boards on loopback (127.0.0.x): live lines,
the recap, --json with structured errors, --retry-failed, and the connection limits: a hung board
(accepts TCP, never greets) costs one connect timeout, never a retried one; an unknown host key
stops doctor at once with the ssh-keyscan hint; paramiko's tracebacks never reach the terminal.

Time bounds here are functional (a retry would double the wait), generous for a loaded machine."""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest
from click.testing import CliRunner
from sshd_fixtures import SshdFleet, free_port, write_project

from edgekit.config import load
from edgekit.fleet import select_devices
from edgekit.fleet_engine import BuiltinEngine


@pytest.fixture
def hung_board() -> Iterator[socket.socket]:
    """A 'board' on 127.0.0.9 that accepts TCP connections and never sends an SSH banner."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.9", 0))
    srv.listen(16)
    held: List[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                held.append(conn)  # kept open, silent
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv
    stop.set()
    t.join(2)
    for c in held:
        c.close()
    srv.close()


@pytest.fixture
def project(tmp_path: Path, sshd_fleet: SshdFleet, ssh_device: Callable, trust_hosts: Callable) -> Path:
    trust_hosts(*sshd_fleet.servers)
    devices = [ssh_device(s, f"board-{i}", groups=["edge"]) for i, s in enumerate(sshd_fleet.servers)]
    return write_project(tmp_path / "proj", devices, deploy={"max_parallel": 3})


def _cli(args: List[str], **env: str) -> Any:
    from edgekit.cli import main

    return CliRunner().invoke(main, args, catch_exceptions=False, env=env or None)


def _hung_project(tmp_path: Path, port: int, **extra: object) -> Path:
    dev = {"name": "hung", "target": "x86-avx2", "transport": "ssh", "host": "127.0.0.9", "port": port,
           "user": "root", "path": "/tmp/nowhere", "groups": ["edge"], **extra}
    return write_project(tmp_path / "hungproj", [dev])


def test_a_hung_board_costs_one_connect_timeout_without_retry(tmp_path: Path, hung_board: socket.socket) -> None:
    cfg = load(_hung_project(tmp_path, hung_board.getsockname()[1]))
    t0 = time.perf_counter()
    [res] = list(BuiltinEngine().status(cfg, select_devices(cfg, group="edge"), max_parallel=2, connect_timeout=2.0))
    elapsed = time.perf_counter() - t0
    assert not res.ok and res.outcome == "failed" and res.error is not None
    assert res.error.kind == "timeout" and "sent no SSH greeting within 2 s" in res.error.message
    assert "ssh -p" in (res.error.hint or "") and "root@127.0.0.9" in (res.error.hint or "")
    assert 1.9 <= elapsed < 3.9, elapsed  # one 2 s wait; a retry would take >= 4 s


def test_connect_timeout_from_ssh_config_and_the_device(tmp_path: Path, hung_board: socket.socket,
                                                       no_user_ssh_config: Path) -> None:
    port = hung_board.getsockname()[1]
    (no_user_ssh_config / ".ssh" / "config").write_text("Host 127.0.0.9\n    ConnectTimeout 1\n")
    cfg = load(_hung_project(tmp_path, port))
    t0 = time.perf_counter()
    [res] = list(BuiltinEngine().doctor(cfg, select_devices(cfg, group="edge"), max_parallel=1))
    assert res.error is not None and res.error.kind == "timeout" and "within 1 s" in res.error.message
    assert time.perf_counter() - t0 < 1.95  # ConnectTimeout 1, not the 10 s default nor a retry
    # the device's own connect_timeout wins over ~/.ssh/config
    cfg = load(_hung_project(tmp_path, port, connect_timeout=1.5))
    [res] = list(BuiltinEngine().status(cfg, select_devices(cfg, group="edge"), max_parallel=1))
    assert res.error is not None and "within 1.5 s" in res.error.message


def test_hung_board_through_the_cli_prints_no_paramiko_traceback(tmp_path: Path, hung_board: socket.socket) -> None:
    state = tmp_path / "state"
    proj = _hung_project(tmp_path, hung_board.getsockname()[1])
    r = _cli(["status", "-g", "edge", "--config", str(proj), "--connect-timeout", "1"], EDGEKIT_STATE_DIR=str(state))
    assert r.exit_code == 7
    text = r.stdout + r.stderr
    assert "Traceback" not in text and "paramiko" not in text.lower() and len(text.splitlines()) < 12, text
    assert "hung" in r.stdout and "failed" in r.stdout and "sent no SSH greeting" in r.stdout
    assert "RECAP status: ok=0 changed=0 unchanged=0 failed=1" in r.stdout
    log = (state / "libraries.log").read_text()
    assert "paramiko.transport" in log and "Error reading SSH protocol banner" in log  # kept, out of sight


def test_doctor_on_an_unknown_host_answers_at_once_with_the_keyscan_hint(
        tmp_path: Path, sshd_fleet: SshdFleet, ssh_device: Callable) -> None:
    server = sshd_fleet.servers[0]  # its key is NOT in known_hosts
    proj = write_project(tmp_path / "p", [ssh_device(server, "stranger", groups=["edge"])])
    t0 = time.perf_counter()
    r = _cli(["doctor", "-d", "stranger", "--config", str(proj)])
    single = time.perf_counter() - t0
    assert r.exit_code == 8 and "unknown host key" in r.stderr
    assert f"ssh-keyscan -p {server.port} {server.host}" in r.stderr and "devices.python" not in r.stderr
    assert single <= 2.0, single
    r = _cli(["doctor", "-g", "edge", "--config", str(proj), "--json"])
    data = json.loads(r.stdout)
    [host] = data["hosts"]
    assert host["error"]["kind"] == "host_key_unknown" and "ssh-keyscan" in host["error"]["hint"]


def test_every_command_on_a_group_with_live_lines_recap_and_json(project: Path) -> None:
    cfg = ["--config", str(project)]
    r = _cli(["deploy", "-g", "edge", *cfg])
    assert r.exit_code == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert sorted(ln.split()[0] for ln in lines[:3]) == ["board-0", "board-1", "board-2"]
    assert all(ln.split()[1] == "switched" for ln in lines[:3])
    assert lines[3].startswith("RECAP deploy: ok=3 changed=3 unchanged=0 failed=0 rolled_back=0 not_attempted=0")
    assert max(len(ln) for ln in lines) < 160  # plain when piped: no 200-column padded table

    r = _cli(["deploy", "-d", "board-0", "-d", "board-2", *cfg, "--json"])
    data = json.loads(r.stdout)
    assert [h["outcome"] for h in data["hosts"]] == ["unchanged", "unchanged"] and data["recap"]["unchanged"] == 2

    r = _cli(["status", "-g", "edge", *cfg, "--json"])
    data = json.loads(r.stdout)
    assert r.exit_code == 0 and len({h["release"] for h in data["hosts"]}) == 1
    assert all(h["data"]["current"] == h["release"] for h in data["hosts"])

    r = _cli(["validate", "-g", "edge", *cfg, "--quick"])
    assert r.exit_code == 0, r.stdout + r.stderr
    assert r.stdout.count(" ok ") == 3 and "p50" in r.stdout and "RECAP validate: ok=3" in r.stdout
    r = _cli(["validate", "-d", "board-1", "-d", "board-0", *cfg, "--quick", "--duration", "5", "--json"])
    data = json.loads(r.stdout)
    assert [h["host"] for h in data["hosts"]] == ["board-1", "board-0"] and data["ok"]
    for h in data["hosts"]:  # --quick: one short window however long --duration is
        lat = h["validation"]["latency"]
        assert lat["repeat"] == 1 and lat["warmup"] == 2 and lat["window_s"] < 1.0, lat

    r = _cli(["doctor", "-g", "edge", *cfg, "--json"])
    data = json.loads(r.stdout)
    assert {h["host"] for h in data["hosts"]} == {"board-0", "board-1", "board-2"}
    assert all(h["data"]["checks"] for h in data["hosts"])

    r = _cli(["rollback", "-g", "edge", *cfg, "--json"])  # nothing before the first release
    data = json.loads(r.stdout)
    assert r.exit_code == 7 and all(h["error"]["kind"] == "deploy" for h in data["hosts"])
    assert data["failed"] == ["board-0", "board-1", "board-2"]


def test_retry_failed_reruns_only_the_failed_hosts(project: Path) -> None:
    cfg = ["--config", str(project)]
    text = project.read_text()
    b1 = next(d for d in load(project).devices if d.name == "board-1")
    project.write_text(text.replace(f"port = {b1.port}", f"port = {free_port(str(b1.host))}", 1))
    r = _cli(["deploy", "-g", "edge", *cfg, "--json"])
    assert r.exit_code == 7
    data = json.loads(r.stdout)
    assert data["failed"] == ["board-1"] and data["hosts"][1]["error"]["kind"] == "unreachable"
    record = project.parent / ".edgekit" / "last-failed-deploy"
    assert record.read_text() == "board-1\n"

    project.write_text(text)  # board-1 is back
    r = _cli(["deploy", "-g", "edge", *cfg, "--retry-failed", "--json"])
    assert r.exit_code == 0, r.stdout + r.stderr
    assert [h["host"] for h in json.loads(r.stdout)["hosts"]] == ["board-1"]
    assert not record.exists()  # everything succeeded: nothing left to retry
    r = _cli(["deploy", "-g", "edge", *cfg, "--retry-failed"])
    assert r.exit_code == 2 and "no failed devices recorded for 'deploy'" in r.stderr

    limit = project.parent / "some.txt"
    limit.write_text("# one per line\nboard-2\n")
    r = _cli(["status", "-g", "edge", *cfg, "--limit", f"@{limit}", "--json"])
    assert [h["host"] for h in json.loads(r.stdout)["hosts"]] == ["board-2"]
    r = _cli(["status", "-g", "edge", *cfg, "--limit", "nope"])
    assert r.exit_code == 2 and "--limit: no device named 'nope'" in r.stderr


def test_keepalives_follow_server_alive_interval_else_15_s(sshd_fleet: SshdFleet, ssh_device: Callable,
                                                           trust_hosts: Callable, no_user_ssh_config: Path,
                                                           tmp_path: Path) -> None:
    """A long validate is silent on the wire for minutes: the connection sends keepalives."""
    from edgekit.transport import connect

    server = sshd_fleet.servers[1]
    trust_hosts(server)
    cfg = load(write_project(tmp_path / "k", [ssh_device(server, "k")]))

    def interval() -> int:
        with connect(cfg.devices[0], cfg) as t:
            assert t.run(["true"], cwd="/").ok
            # paramiko keeps the interval in its packetizer (no public getter); the real object is read
            return int(t.client.get_transport().packetizer._Packetizer__keepalive_interval)  # type: ignore[union-attr]

    assert interval() == 15
    (no_user_ssh_config / ".ssh" / "config").write_text(f"Host {server.host}\n    ServerAliveInterval 4\n")
    assert interval() == 4
