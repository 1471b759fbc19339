"""Issue 12, cases 5-9, 11, 12: hostile known_hosts, hostile runners on the device, bad input.

Each test reproduces the attack as it was measured (real sshd on loopback, a real runner process
on a local or SSH device, real files) and checks that it now fails cleanly: one line, the right
exit code, never 70, never a traceback, nothing stored that should not be.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import pytest
from click.testing import CliRunner, Result

from edgekit.cli import main
from edgekit.config import load
from edgekit.errors import ConfigError, DeviceError
from sshd_fixtures import SshdFleet, SshdServer, generate_key, start_sshd, write_project

ANSI_SGR = re.compile(r"\x1b\[[0-9;]*m")
GOOD_RESULT: Dict[str, Any] = {
    "schema": 2, "ok": True, "release_id": "r1", "target": "x86-avx2",
    "metric": {"name": "top1", "value": 1.0, "threshold": 0.99, "passed": True},
    "metrics": {"top1": 1.0}, "runtime": {"name": "onnxruntime", "version": "1.0", "provider": "CPUExecutionProvider"},
    "latency": {"p50_ms": 1.0, "p90_ms": 1.1, "p99_ms": 1.2, "samples_ms": [1.0, 1.1, 1.2]},
    "memory": {"peak_rss_mb": 10.0}, "versions": {"python": "3.11"}, "device": {"hostname": "box"}, "power": None,
}


def invoke(*args: str, env: Optional[Dict[str, str]] = None) -> Result:
    return CliRunner(env=env).invoke(main, list(args))


def assert_clean_failure(res: Result, code: int) -> None:
    """The promise for bad input: the error's own exit code, an error: line, no traceback."""
    assert res.exit_code == code, (res.exit_code, res.output)
    assert res.exit_code != 70
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.output


# ------------------------------------------------------------------------------------------------
# A device whose current release holds a hostile runner.py
# ------------------------------------------------------------------------------------------------
def hostile_runner(device_root: Path, body: str) -> Path:
    """``device_root/current`` -> a release whose runner.py runs ``body`` (``out`` is its --out path)."""
    release = device_root / "releases" / "r1"
    release.mkdir(parents=True, exist_ok=True)
    (release / "runner.py").write_text("import json, os, sys\n"
                                       "out = sys.argv[sys.argv.index('--out') + 1]\n"
                                       "os.makedirs(os.path.dirname(out), exist_ok=True)\n" + textwrap.dedent(body))
    current = device_root / "current"
    if not current.is_symlink():
        os.symlink("releases/r1", current)
    return release


def writes(result: Any, extra: str = "") -> str:
    """A runner body that writes ``result`` (JSON text or an object) and runs ``extra`` first."""
    text = result if isinstance(result, str) else json.dumps(result)
    return f"{extra}\nopen(out, 'w').write({text!r})\n"


@pytest.fixture
def local_project(tmp_path: Path) -> Path:
    cfg = tmp_path / "proj" / "edgekit.toml"
    cfg.parent.mkdir()
    cfg.write_text(textwrap.dedent(f"""
        [model]
        name = "tiny"
        source = "onnx"
        path = "model.onnx"
        [[inputs]]
        name = "x"
        shape = [1, 16]
        [calibration]
        data = "calib.npz"
        [validation]
        data = "calib.npz"
        threshold = 0.99
        [power]
        sampler = "none"
        [[devices]]
        name = "board"
        target = "x86-avx2"
        path = "device"
        python = {json.dumps(sys.executable)}
    """))
    return cfg


def validate_cli(cfg: Path, *extra: str, env: Optional[Dict[str, str]] = None) -> Result:
    return invoke("validate", "--device", "board", "--config", str(cfg), "--duration", "0.01", *extra, env=env)


def stored_runs(cfg: Path) -> List[Path]:
    runs = cfg.parent / "runs"
    return sorted(runs.iterdir()) if runs.is_dir() else []


# ------------------------------------------------------------------------------------------------
# Case 6: terminal injection through device strings
# ------------------------------------------------------------------------------------------------
INJECTED = "[link=https://evil.example/]click[/link] \x1b]0;pwned\x07\x1b[2J\x1b]8;;https://evil.example\x1b\\x\x1b]8;;\x1b\\ [/]"


def test_device_strings_reach_the_terminal_inert(local_project: Path) -> None:
    result = dict(GOOD_RESULT, runtime={"name": "onnxruntime", "version": "1.0", "provider": INJECTED},
                  target="x86\x1b[31m-avx2")
    hostile_runner(local_project.parent / "device", writes(result))
    # FORCE_COLOR makes rich treat the output as a terminal: it would emit OSC 8 links for [link=...].
    res = validate_cli(local_project, env={"FORCE_COLOR": "1"})
    assert res.exit_code == 0, res.output
    assert "\x1b]" not in res.output  # no OSC at all: no hyperlink, no window title
    assert "\x1b[2J" not in res.output and "\x1b[31m" not in res.output
    plain = ANSI_SGR.sub("", res.output)  # rich's own colours aside, the markup shows as text
    assert "[link=https://evil.example/]click[/link]" in plain and "[/]" in plain


def test_error_line_from_the_device_is_one_clean_line(local_project: Path) -> None:
    message = "bad model\x1b[2J\x1b]0;owned\x07\n[/] [link=https://x]y[/link]\r\nsecond line"
    hostile_runner(local_project.parent / "device",
                   writes(dict(GOOD_RESULT, ok=False, error={"kind": "runtime", "message": message, "hint": "\x1b[5mhint"}),
                          "sys.stderr.write('runner: \\x1b]0;t\\x07 failed\\n')") + "sys.exit(1)\n")
    res = validate_cli(local_project, env={"FORCE_COLOR": "1"})
    assert_clean_failure(res, DeviceError.exit_code)
    assert "\x1b" not in res.output and "\r" not in res.output
    error = next(ln for ln in res.output.splitlines() if ln.startswith("error:"))
    assert "bad model" in error and "second line" in error and "[/]" in error  # folded into the one line
    assert next(ln for ln in res.output.splitlines() if ln.startswith("hint:")) == "hint: hint"


def test_report_tables_and_markdown_escape_device_strings(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    evil = dict(GOOD_RESULT, host={"device": "pi`<img src=x onerror=alert(1)>"},
                runtime={"name": "ort", "provider": "<script>alert(1)</script>|[x](javascript:alert(1))\x1b[2J"},
                error={"kind": "runtime", "message": "<b>bold</b>\n| injected | row |"})
    (runs / "20250101T000000Z-pi.json").write_text(json.dumps(evil))
    res = invoke("report", "--runs-dir", str(runs), "--out", str(tmp_path / "out"), env={"FORCE_COLOR": "1"})
    assert res.exit_code == 0, res.output
    assert "\x1b[2J" not in res.output and "\x1b]" not in res.output
    md = (tmp_path / "out" / "report.md").read_text()
    assert "<script>" not in md and "<img" not in md and "<b>" not in md
    assert "&lt;script&gt;" in md and "&lt;b&gt;" in md
    assert "](javascript" not in md  # the link syntax is broken up
    assert "\n| injected |" not in md  # the message stayed on its own line
    assert r"- pi\`&lt;img src=x onerror=alert\(1\)&gt;: " in md  # the name as inert text
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<script>alert" not in html and "<img src=x" not in html


# ------------------------------------------------------------------------------------------------
# Case 7: malformed result JSON from the device
# ------------------------------------------------------------------------------------------------
MALFORMED = {
    "metric as a list": (dict(GOOD_RESULT, metric=[1, 2]), "metric"),
    "string for a number": (dict(GOOD_RESULT, metric=dict(GOOD_RESULT["metric"], value="0.99")), "metric.value"),
    "string for a flag": (dict(GOOD_RESULT, ok="yes"), "ok"),
    "markup in a number field": (dict(GOOD_RESULT, latency={"p50_ms": "[/]"}), "latency.p50_ms"),
    "deep nesting": ('{"schema": 2, "device": ' + "[" * 100000 + "]" * 100000 + "}", "nested deeper"),
    "not JSON": ("{'schema': 2", "invalid JSON"),
    "NaN literal": ('{"schema": 2, "ok": true, "latency": {"p50_ms": NaN}}', "invalid JSON"),
    "not an object": ("[1, 2, 3]", "expected a JSON object"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_result_is_one_line_and_not_stored(local_project: Path, case: str) -> None:
    result, needle = MALFORMED[case]
    hostile_runner(local_project.parent / "device", writes(result))
    res = validate_cli(local_project)
    assert_clean_failure(res, DeviceError.exit_code)
    assert needle in res.output and "not a valid result file" in res.output
    assert stored_runs(local_project) == []  # nothing invalid lands in runs/


def test_one_bad_run_file_is_skipped_by_report(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    for i, device in enumerate(("a", "b")):
        (runs / f"2025010{i + 1}T000000Z-{device}.json").write_text(json.dumps(dict(GOOD_RESULT, host={"device": device})))
    (runs / "20250103T000000Z-bad.json").write_text(json.dumps(dict(GOOD_RESULT, metric={"value": [1]})))
    (runs / "20250104T000000Z-deep.json").write_text('{"schema": 2, "x": ' + "[" * 5000 + "]" * 5000 + "}")
    (runs / "20250105T000000Z-empty.json").write_text("")
    res = invoke("report", "--runs-dir", str(runs), "--out", str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    warnings = [ln for ln in res.output.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 3, res.output
    assert any("20250103T000000Z-bad.json" in w and "field 'metric.value'" in w for w in warnings)
    assert any("20250104T000000Z-deep.json" in w and "nested deeper" in w for w in warnings)
    assert any("20250105T000000Z-empty.json" in w and "empty" in w for w in warnings)
    assert "2/2 device(s) passed (2 run(s))" in res.output


# ------------------------------------------------------------------------------------------------
# Case 8: unbounded device output
# ------------------------------------------------------------------------------------------------
def _peak_rss_mb(args: List[str], env: Dict[str, str]) -> tuple:
    """Run the CLI in a fresh interpreter; its exit code, stderr and its own peak RSS (MB)."""
    code = ("import resource, sys\nfrom edgekit.cli import main\n"
            "try:\n    main(sys.argv[1:], prog_name='edgekit')\nexcept SystemExit as e:\n    rc = e.code\n"
            "sys.stderr.write('\\nPEAK %d RC %s\\n' % (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, rc))\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=600)
    m = re.search(r"PEAK (\d+) RC (\S+)", proc.stderr)
    assert m, proc.stderr[-2000:]
    return m.group(2), proc.stdout + proc.stderr, int(m.group(1)) / 1024


def test_300mb_of_stdout_does_not_reach_host_memory(local_project: Path) -> None:
    chunk = "x" * (1 << 20)
    body = writes(GOOD_RESULT, f"chunk = {chunk[:16]!r} * (1 << 16)\nfor _ in range(300):\n    sys.stdout.write(chunk)\n"
                               "sys.stdout.write('LAST-LINE')\n")
    hostile_runner(local_project.parent / "device", body)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    rc, output, peak = _peak_rss_mb(["validate", "--device", "board", "--config", str(local_project),
                                     "--duration", "0.01", "--json"], env)
    assert rc in ("0", "None"), output[-2000:]
    assert peak < 200, f"host peak RSS {peak:.0f} MB for 300 MB of device stdout"  # was 659 MB
    assert len(stored_runs(local_project)) == 1


def test_oversized_result_is_refused_before_it_is_fetched(local_project: Path) -> None:
    # 300 MB as the device reports it (a sparse file: the size is real, the disk use is not).
    hostile_runner(local_project.parent / "device", "with open(out, 'wb') as f:\n    f.truncate(300 * 10**6)\n")
    res = validate_cli(local_project)
    assert_clean_failure(res, DeviceError.exit_code)
    assert "300.0 MB, over the 32 MB limit" in res.output
    assert stored_runs(local_project) == []


def test_result_size_limit_is_configurable(local_project: Path) -> None:
    big = dict(GOOD_RESULT, padding="p" * 2_000_000)  # a valid 2 MB result
    hostile_runner(local_project.parent / "device", writes(big))
    res = validate_cli(local_project, env={"EDGEKIT_MAX_RESULT_MB": "1"})
    assert_clean_failure(res, DeviceError.exit_code)
    assert "over the 1 MB limit" in res.output and stored_runs(local_project) == []
    res = validate_cli(local_project, "--max-result-mb", "1.5", env={"EDGEKIT_MAX_RESULT_MB": "5"})
    assert "over the 1.5 MB limit" in res.output and stored_runs(local_project) == []  # the option wins
    res = validate_cli(local_project, env={"EDGEKIT_MAX_RESULT_MB": "5"})
    assert res.exit_code == 0, res.output
    assert len(stored_runs(local_project)) == 1


def test_result_symlinked_to_dev_zero_is_not_fetched(local_project: Path) -> None:
    hostile_runner(local_project.parent / "device", "os.symlink('/dev/zero', out)\n")
    res = validate_cli(local_project)
    assert_clean_failure(res, DeviceError.exit_code)
    assert "not a regular file" in res.output and stored_runs(local_project) == []


def test_bounded_output_keeps_head_and_tail() -> None:
    from edgekit.device.bounded import HeadTail

    keep = HeadTail(10)
    for piece in (b"HEAD-", b"0123456789" * 1000, b"-TAIL"):
        keep.feed(piece)
    value = keep.getvalue()
    assert value.startswith(b"HEAD-01234") and value.endswith(b"6789-TAIL")
    assert b"[... 9990 bytes of output left out ...]" in value and len(keep) == 20


def test_ssh_command_output_is_bounded(sshd: SshdServer, sshd_fleet: SshdFleet, trust_hosts: Callable,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.transport import ssh

    trust_hosts(sshd)
    monkeypatch.setattr(ssh, "RUN_OUTPUT_LIMIT", 1 << 20)
    flood = "import sys\nsys.stdout.write('START'); sys.stdout.flush()\nfor _ in range(64):\n" \
            "    sys.stdout.write('y' * (1 << 20))\nsys.stdout.write('END')\n"
    with ssh.SSHTransport("dev", sshd.host, str(sshd.device_root), port=sshd.port, user="root",
                          identity_file=str(sshd_fleet.user_key)) as t:
        res = t.run([sys.executable, "-c", flood], timeout=120)
    assert res.ok
    assert res.stdout.startswith("START") and res.stdout.endswith("END")
    assert len(res.stdout) < 2 * (1 << 20) + 100  # 64 MB sent, 2 MB kept


# ------------------------------------------------------------------------------------------------
# Case 9: a failed SSH validate leaves no empty run file
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body", ["sys.exit(1)\n", "open(out, 'w').close()\n"], ids=["no result", "empty result"])
def test_failed_ssh_validate_stores_nothing(tmp_path: Path, sshd: SshdServer, trust_hosts: Callable,
                                            ssh_device: Callable, body: str) -> None:
    trust_hosts(sshd)
    device = ssh_device(sshd, "board")
    cfg = write_project(tmp_path / "proj", [device], bundles={})
    hostile_runner(Path(str(device["path"])), body)
    res = invoke("validate", "--device", "board", "--config", str(cfg), "--duration", "0.01", "--power", "none")
    assert_clean_failure(res, DeviceError.exit_code)
    runs = cfg.parent / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []  # no 0-byte file, no temporary left behind
    res = invoke("report", "--runs-dir", str(runs), "--out", str(tmp_path / "out"))
    assert res.exit_code == ConfigError.exit_code and "no runs in" in res.output  # not "invalid JSON"


def test_ssh_validate_of_a_good_runner_stores_one_file(tmp_path: Path, sshd: SshdServer, trust_hosts: Callable,
                                                        ssh_device: Callable) -> None:
    trust_hosts(sshd)
    device = ssh_device(sshd, "board")
    cfg = write_project(tmp_path / "proj", [device], bundles={})
    hostile_runner(Path(str(device["path"])), writes(GOOD_RESULT, "print('x' * 300000)"))
    res = invoke("validate", "--device", "board", "--config", str(cfg), "--duration", "0.01", "--power", "none")
    assert res.exit_code == 0, res.output
    files = list((cfg.parent / "runs").iterdir())
    assert len(files) == 1 and json.loads(files[0].read_text())["host"]["device"] == "board"


# ------------------------------------------------------------------------------------------------
# Case 5: known_hosts markers against a real sshd
# ------------------------------------------------------------------------------------------------
def _ssh_project(tmp_path: Path, device: Dict[str, object]) -> Path:
    return write_project(tmp_path / "proj", [device], bundles={})


def _other_key(tmp_path: Path, name: str) -> str:
    """``<type> <base64>`` of a fresh key that is not the server's."""
    return " ".join(Path(str(generate_key(tmp_path / name)) + ".pub").read_text().split()[:2])


def test_markers_beside_plain_entries_work(tmp_path: Path, sshd: SshdServer, ssh_device: Callable,
                                           no_user_ssh_config: Path) -> None:
    kh = no_user_ssh_config / ".ssh" / "known_hosts"
    kh.write_text(f"@cert-authority *.corp.example {_other_key(tmp_path, 'ca')}\n"
                  f"@revoked * {_other_key(tmp_path, 'old')}\n"
                  "@unknown-marker host ssh-ed25519 AAAA\n"
                  "garbage line\n"
                  + sshd.known_hosts_line())
    res = invoke("status", "-d", "board", "--config", str(_ssh_project(tmp_path, ssh_device(sshd, "board"))))
    assert res.exit_code == 0, res.output  # was 70: "unexpected InvalidHostKey"
    assert "current none" in res.output


def test_revoked_host_key_is_refused(tmp_path: Path, sshd: SshdServer, ssh_device: Callable,
                                     no_user_ssh_config: Path) -> None:
    kh = no_user_ssh_config / ".ssh" / "known_hosts"
    kh.write_text(sshd.known_hosts_line() + f"@revoked * {sshd.public_key_line()}\n")
    cfg = _ssh_project(tmp_path, ssh_device(sshd, "board"))
    for extra in ([], ["--accept-new-host-key"]):  # trust on first use never overrides a revocation
        res = invoke("status", "-d", "board", "--config", str(cfg), *extra)
        assert_clean_failure(res, DeviceError.exit_code)
        assert "is REVOKED in" in res.output and f"{kh}:2" in res.output
    assert kh.read_text().count("\n") == 2  # nothing recorded


@pytest.fixture
def cert_sshd(tmp_path_factory: pytest.TempPathFactory, sshd_fleet: SshdFleet) -> Any:
    """An sshd presenting a host certificate signed by a test CA (OpenSSH's HostCertificate)."""
    work = tmp_path_factory.mktemp("cert-sshd") / "127.0.0.9"
    work.mkdir(parents=True)
    ca = generate_key(work.parent / "host_ca", comment="test-ca")
    host_key = generate_key(work / "ssh_host_ed25519_key")
    subprocess.run(["ssh-keygen", "-q", "-s", str(ca), "-I", "device", "-h", "-n", "127.0.0.9",
                    str(host_key) + ".pub"], check=True, capture_output=True)
    server = start_sshd(work, "127.0.0.9", Path(str(sshd_fleet.user_key) + ".pub"),
                        extra_config=f"HostCertificate {host_key}-cert.pub")
    yield server, " ".join(Path(str(ca) + ".pub").read_text().split()[:2])
    server.stop()


def test_host_trusted_only_through_a_ca_is_a_clear_error(tmp_path: Path, cert_sshd: Any, sshd_fleet: SshdFleet,
                                                        ssh_device: Callable, no_user_ssh_config: Path) -> None:
    server, ca_key = cert_sshd
    kh = no_user_ssh_config / ".ssh" / "known_hosts"
    kh.write_text(f"@cert-authority 127.0.0.*,[127.0.0.*]:* {ca_key}\n")
    # OpenSSH itself accepts this file and the certificate: the file is valid.
    ssh = subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={kh}", "-o", "StrictHostKeyChecking=yes",
                          "-o", "GlobalKnownHostsFile=/dev/null", "-i", str(sshd_fleet.user_key), "-p", str(server.port),
                          f"root@{server.host}", "true"], capture_output=True, text=True, timeout=30)
    assert ssh.returncode == 0, ssh.stderr
    res = invoke("status", "-d", "board", "--config", str(_ssh_project(tmp_path, ssh_device(server, "board"))))
    assert_clean_failure(res, DeviceError.exit_code)
    assert "certificate authority" in res.output and "cannot verify host certificates" in res.output
    assert "hint: trust the host's own key instead" in res.output


def test_ssh_config_port_out_of_range(tmp_path: Path, no_user_ssh_config: Path) -> None:
    (no_user_ssh_config / ".ssh" / "config").write_text("Host board-alias\n  Port 70000\n")
    cfg = _ssh_project(tmp_path, {"name": "board", "target": "x86-avx2", "transport": "ssh", "host": "board-alias"})
    res = invoke("status", "-d", "board", "--config", str(cfg))
    assert_clean_failure(res, ConfigError.exit_code)
    assert "port 70000 is outside 1..65535" in res.output


# ------------------------------------------------------------------------------------------------
# Case 11: bad input
# ------------------------------------------------------------------------------------------------
def _project_with(tmp_path: Path, **replace: str) -> Path:
    """The tiny project (onnx source) with lines of edgekit.toml replaced."""
    from bundles import tiny_model

    root = tmp_path / "proj"
    root.mkdir(exist_ok=True)
    tiny_model(root / "model.onnx")
    np.savez(root / "calib.npz", x=np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32))
    text = textwrap.dedent("""
        [model]
        name = "tiny"
        source = "onnx"
        path = "model.onnx"
        opset = 17
        [[inputs]]
        name = "x"
        shape = [1, 16]
        [calibration]
        data = "calib.npz"
        [validation]
        data = "calib.npz"
        threshold = 0.99
        [[devices]]
        name = "board"
        target = "x86-avx2"
        path = "device"
    """)
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    (root / "edgekit.toml").write_text(text)
    return root / "edgekit.toml"


@pytest.mark.parametrize("old,new,needle", [
    ("opset = 17", 'opset = "17"', "field 'model.opset': Input should be a valid integer (got '17', a string)"),
    ("threshold = 0.99", "threshold = nan", "field 'validation.threshold': Input should be a finite number"),
    ("threshold = 0.99", "threshold = inf", "field 'validation.threshold': Input should be a finite number"),
    ('path = "device"', 'path = "device"\nport = 70000', "field 'devices.0.port': Input should be less than or equal to 65535"),
    ('path = "device"', 'path = "device"\n[[devices]]\nname = "board"\ntarget = "x86-avx2"',
     "field 'devices.1.name': device name 'board' is used twice"),
    ('shape = [1, 16]', 'shape = [1, "16"]', "field 'inputs.0.shape.1': Input should be a valid integer"),
])
def test_config_is_strict(tmp_path: Path, old: str, new: str, needle: str) -> None:
    cfg = _project_with(tmp_path, **{old: new})
    with pytest.raises(ConfigError) as err:
        load(cfg)
    assert needle in err.value.message and str(cfg) in err.value.message
    res = invoke("build", "--target", "x86-avx2", "--config", str(cfg))
    assert_clean_failure(res, ConfigError.exit_code)
    assert needle in res.output


def test_non_utf8_config(tmp_path: Path) -> None:
    cfg = _project_with(tmp_path)
    cfg.write_bytes(cfg.read_bytes().replace(b'name = "tiny"', b'name = "tiny\xff\xfe"'))
    res = invoke("build", "--target", "x86-avx2", "--config", str(cfg))
    assert_clean_failure(res, ConfigError.exit_code)
    assert f"{cfg}: not UTF-8 text" in res.output


def _truncated_npz(path: Path) -> None:
    np.savez(path, x=np.ones((64, 16), np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _object_npz(path: Path) -> None:
    arr = np.empty((4, 16), dtype=object)
    arr[:] = 1.0
    np.savez(path, x=arr)  # numpy pickles object arrays; edgekit never unpickles


def _zero_samples(path: Path) -> None:
    np.savez(path, x=np.ones((0, 16), np.float32))


def _bad_member(path: Path) -> None:
    np.savez(path, x=np.ones((4, 16), np.float32))
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("y.npy", b"\x93NUMPY garbage")


@pytest.mark.parametrize("make,needle", [
    (_truncated_npz, "cannot read samples (BadZipFile"),
    (_object_npz, "cannot read samples (ValueError: Object arrays cannot be loaded"),
    (_zero_samples, "no samples (the batch axis is empty) for [calibration]"),
], ids=["truncated", "object-array", "zero-samples"])
def test_bad_sample_files_are_one_config_error_before_export(tmp_path: Path, make: Callable, needle: str) -> None:
    cfg = _project_with(tmp_path)
    make(cfg.parent / "calib.npz")
    res = invoke("build", "--target", "x86-avx2", "--config", str(cfg))
    assert_clean_failure(res, ConfigError.exit_code)
    assert needle in res.output and str(cfg.parent / "calib.npz") in res.output
    assert "exporting" not in res.output  # refused before the export started
    assert not list(cfg.parent.glob("dist/**/*.onnx"))  # nothing was exported


# ------------------------------------------------------------------------------------------------
# Case 12: the debug log
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def crash(monkeypatch: pytest.MonkeyPatch) -> None:
    """An internal bug (the kind exit 70 is for): `edgekit targets list` raises a RuntimeError."""
    from edgekit import targets

    def broken(*_args: object, **_kw: object) -> None:
        raise RuntimeError("simulated bug \x1b[2J")

    monkeypatch.setattr(targets, "catalog", broken)


def test_debug_log_lives_in_a_private_directory(crash: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    res = invoke("targets", "list")
    assert res.exit_code == 70 and "\x1b" not in res.output
    log = state / "edgekit" / "debug.log"
    assert f"details in {log}" in res.output
    assert "RuntimeError: simulated bug" in log.read_text()
    assert (log.parent.stat().st_mode & 0o777) == 0o700 and (log.stat().st_mode & 0o777) == 0o600


def test_debug_log_never_follows_a_planted_symlink(crash: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    # The old fixed name in $TMPDIR, pre-planted: no longer written at all.
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    os.symlink(victim, tmp_path / "tmp" / "edgekit-debug.log")
    # A symlink planted at the new name itself: refused (O_NOFOLLOW), the next private place is used.
    state = tmp_path / "state"
    (state / "edgekit").mkdir(parents=True, mode=0o700)
    os.symlink(victim, state / "edgekit" / "debug.log")
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read $TMPDIR
    res = invoke("targets", "list")
    assert res.exit_code == 70
    assert victim.read_text() == "precious"
    fallback = tmp_path / "tmp" / f"edgekit-{os.getuid()}" / "debug.log"
    assert f"details in {fallback}" in res.output and "simulated bug" in fallback.read_text()


def test_debug_log_refuses_a_directory_someone_else_owns(crash: None, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    if os.getuid() != 0:  # CI runs as root: there this test must run
        if os.environ.get("CI"):
            pytest.fail("CI must run as root to make a directory owned by another user", pytrace=False)
        pytest.skip("needs root to make a directory owned by another user")
    theirs = tmp_path / "state" / "edgekit"
    theirs.mkdir(parents=True)
    os.chown(theirs, 65534, 65534)  # nobody: an attacker who made the directory first
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    res = invoke("targets", "list")
    assert res.exit_code == 70 and not (theirs / "debug.log").exists()
    assert f"details in {tmp_path / 'tmp' / f'edgekit-{os.getuid()}' / 'debug.log'}" in res.output


def test_bounded_wrapper_is_device_code() -> None:
    """It runs on the board beside the runner: standard library only, parses as Python 3.8."""
    import ast

    import edgekit.device.bounded as bounded

    source = Path(bounded.__file__)
    vermin = Path(sys.executable).parent / "vermin"
    proc = subprocess.run([str(vermin), "-t=3.8-", "--no-tips", "--violations", str(source)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    imported = {a.name.split(".")[0] for n in ast.walk(ast.parse(source.read_text()))
                if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(ast.parse(source.read_text()))
                 if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


def test_bounded_wrapper_passes_exit_status_and_stops_at_timeout(tmp_path: Path) -> None:
    from edgekit.validate import BOUNDED

    def run(limit: int, timeout: float, code: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", BOUNDED, str(limit), str(timeout), "--", sys.executable, "-c", code],
                              capture_output=True, timeout=60)

    proc = run(4, 0, "import sys; sys.stdout.write('abcdefghij'); sys.stderr.write('E' * 3); sys.exit(3)")
    assert proc.returncode == 3 and proc.stderr == b"EEE"
    assert proc.stdout.startswith(b"abcd") and proc.stdout.endswith(b"ghij") and b"2 bytes of output left out" in proc.stdout
    proc = run(100, 0.5, "import time; print('started', flush=True); time.sleep(30)")
    assert proc.returncode == 124 and b"started" in proc.stdout and b"stopped after" in proc.stderr
