"""edgekit/device/release.py as another engine (the Ansible module) runs it: one operation per
process, JSON on stdin, one JSON object out; and its refusals of hostile requests and device files."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

from sshd_fixtures import make_bundle

SCRIPT = Path(__file__).resolve().parent.parent / "edgekit" / "device" / "release.py"
OWNER = json.dumps({"token": "0123456789abcdef0123456789abcdef", "pid": 1, "host": "ansible"})


def op(name: str, root: Path, req: Any, raw: bytes = b"") -> Dict[str, Any]:
    proc = subprocess.run([sys.executable, str(SCRIPT), name, "--root", str(root)],
                          input=raw or json.dumps(req).encode(), capture_output=True, timeout=60)
    out = json.loads(proc.stdout)
    assert proc.returncode == (0 if out["ok"] else 1 if out["kind"] != "bad_request" or raw == b"" else 2), proc
    assert proc.stderr == b""
    return out


def files_of(bundle: Path) -> Dict[str, str]:
    return {str(p.relative_to(bundle)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in bundle.rglob("*") if p.is_file()}


def test_one_operation_per_process_deploys_like_a_session(tmp_path: Path) -> None:
    root = tmp_path / "device"
    bundle = make_bundle(tmp_path, 1)
    rid = json.loads((bundle / "manifest.json").read_text())["release_id"]
    files = files_of(bundle)
    assert op("lock", root, {"owner": OWNER}) == {"locked": True, "ok": True}
    other = op("lock", root, {"owner": OWNER.replace("ansible", "other")})
    assert other["locked"] is False and json.loads(other["held"])["host"] == "ansible"
    prep = op("prepare", root, {"owner": OWNER, "release_id": rid, "files": files})
    assert prep["ok"] and sorted(prep["need"]) == sorted(files) and prep["current"] is None
    for name in prep["need"]:  # what an Ansible copy task does between prepare and commit
        shutil.copyfile(bundle / name, root / "releases" / f"{rid}.partial" / name)
    done = op("commit", root, {"owner": OWNER, "release_id": rid, "files": files, "keep": 2})
    assert done["ok"] and done["switched"] and done["previous"] is None
    assert op("unlock", root, {"owner": OWNER})["released"] is True
    st = op("status", root, {})
    assert st["current"] == rid and st["lock"] is None and st["partial"] == []
    assert os.readlink(root / "current") == f"releases/{rid}"
    assert sorted(files_of(root / "releases" / rid)) == sorted(files)  # no owner mark left in the release


def test_hostile_requests_are_refused_and_touch_nothing_outside(tmp_path: Path) -> None:
    root = tmp_path / "device"
    outside = tmp_path / "outside"
    outside.mkdir()
    assert op("lock", root, {"owner": OWNER})["locked"]
    good = "a" * 64
    for files in ({"../outside/x": good}, {"/etc/passwd": good}, {"a/../../x": good}, {"bad\nname": good},
                  {"~root/x": good}, {"ok.bin": "not a hash"}, ["list"]):
        out = op("prepare", root, {"owner": OWNER, "release_id": "0" * 16, "files": files})
        assert out["ok"] is False and out["kind"] == "bad_request", files
    for rid in ("../../outside", "0" * 15, "G" * 16, None):
        out = op("prepare", root, {"owner": OWNER, "release_id": rid, "files": {"x": good}})
        assert out["kind"] == "bad_request", rid
    assert op("commit", root, {"owner": "someone else", "release_id": "0" * 16, "files": {}})["kind"] == "lock_lost"
    assert op("lock", root, {"owner": "x" * (70 << 10)})["kind"] == "bad_request"
    out = op("status", root, {}, raw=b"{not json")
    assert out["kind"] == "bad_request"
    assert os.listdir(outside) == []


def test_an_upload_stream_cannot_escape_the_partial(tmp_path: Path) -> None:
    root = tmp_path / "device"
    outside = tmp_path / "outside"
    outside.mkdir()
    rid = "1" * 16
    files = {"sub/model.onnx": hashlib.sha256(b"abc").hexdigest()}
    reqs = [{"op": "lock", "owner": OWNER},
            {"op": "prepare", "owner": OWNER, "release_id": rid, "files": files}]
    data = b"".join(json.dumps(r).encode() + b"\n" for r in reqs)
    evil = {"op": "upload", "owner": OWNER, "release_id": rid, "files": [["../../outside/pwned", 3]]}
    ok = {"op": "upload", "owner": OWNER, "release_id": rid, "files": [["sub/model.onnx", 3]]}
    data += json.dumps(evil).encode() + b"\nxyz" + json.dumps(ok).encode() + b"\nabc"  # refused, its bytes skipped
    # a planted link inside the partial is replaced, never written through
    (root / "releases" / f"{rid}.partial").mkdir(parents=True)
    os.symlink(outside, root / "releases" / f"{rid}.partial" / "sub")
    proc = subprocess.run([sys.executable, str(SCRIPT), "session", "--root", str(root)], input=data,
                          capture_output=True, timeout=60)
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [a["ok"] for a in answers] == [True, True, False, True] and answers[2]["kind"] == "bad_request"
    assert answers[3]["written"] == 3
    assert os.listdir(outside) == []
    part = root / "releases" / f"{rid}.partial"
    assert not (part / "sub").is_symlink() and (part / "sub" / "model.onnx").read_bytes() == b"abc"


def test_a_session_whose_host_went_silent_stops_beating(tmp_path: Path) -> None:
    """A link partitioned without a FIN leaves the session's process blocked on its input: it must
    not keep the lock looking alive, so it stops beating after three silent beats."""
    import time

    root = tmp_path / "device"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "session", "--root", str(root)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        proc.stdin.write(json.dumps({"op": "lock", "owner": OWNER, "heartbeat_s": 0.1}).encode() + b"\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["locked"]
        beat = root / "releases" / ".lock" / "heartbeat"
        time.sleep(0.25)
        assert beat.read_text().endswith(" 01234567")  # beating while the host is there
        time.sleep(0.6)  # silent host: beats stop after three
        last = beat.read_text()
        time.sleep(0.5)
        assert beat.read_text() == last
        proc.stdin.write(json.dumps({"op": "status"}).encode() + b"\n")  # the host speaks again
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["ok"]
        time.sleep(0.25)
        assert beat.read_text() != last
    finally:
        proc.kill()
        proc.wait()
