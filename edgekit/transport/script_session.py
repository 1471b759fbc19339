"""Drive edgekit/device/release.py as a session over a byte pipe (an SSH exec channel, a local
subprocess, an adb shell, ...): JSON request lines in, one JSON answer line out each.

Requests are pipelined: a batch goes out whole before its first answer is read, so lock+prepare or
commit+unlock cost one round trip. Uploads follow an ``upload`` request as raw bytes on the same
stream (no per-file acknowledgement; the one answer after the last byte says what was written).
"""
from __future__ import annotations

import json
import shlex
import subprocess
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..device import release as R
from ..errors import DeviceError
from . import ReleaseSession

ANSWER_LIMIT = 32 << 20
"""Bytes of one answer line read: the largest (prepare) lists a release's file hashes."""
CHUNK = 1 << 20
_LAYOUT = Path(R.__file__).with_name("release_layout.py").read_text(encoding="utf-8")
SOURCE = ("import sys, types\n"  # release_layout.py defined in memory, then release.py imports it
          "_m = types.ModuleType('release_layout')\n"
          f"exec(compile({_LAYOUT!r}, 'release_layout.py', 'exec'), _m.__dict__)\n"
          "sys.modules['release_layout'] = _m\n" + Path(R.__file__).read_text(encoding="utf-8"))


FIRST_LIMIT = 64 << 10
"""Bytes of first requests that ride on the command line (Linux takes 128 KiB per argument)."""


def script_argv(python: str, root: str, first: Sequence[Dict[str, Any]] = ()) -> List[str]:
    """The command that runs the release script in session mode, its source inline: nothing needs
    installing on the device, and the device always runs the host's version of the logic."""
    more = ["--requests", json.dumps(list(first))] if first else []
    return [python, "-I", "-S", "-c", SOURCE, "session", "--root", root, *more]


def script_command(python: str, root: str, first: Sequence[Dict[str, Any]] = ()) -> str:
    """``script_argv`` for a remote shell; ``~/`` stays unexpanded (the script expands it)."""
    return shlex.join(script_argv(python, root, first))


def fits_command_line(requests: Sequence[Dict[str, Any]]) -> bool:
    return len(json.dumps(list(requests))) <= FIRST_LIMIT


class Pipe:
    """What a session needs from a link: write bytes, read one line (bounded), and say why it ended."""

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def readline(self, limit: int) -> bytes:
        raise NotImplementedError

    def ended(self) -> str:
        """Why the other end stopped answering (exit status, stderr tail), for the error line."""
        return ""

    def close(self) -> None:
        pass


class ScriptSession(ReleaseSession):
    def __init__(self, name: str, pipe: Pipe) -> None:
        self.name = name
        self.pipe = pipe
        self._writing = threading.Lock()  # one writer at a time: requests, upload streams, pings
        self._stop = threading.Event()
        self.root: Optional[str] = None
        """The absolute device directory, as the device resolved it (prepare says)."""
        self.bytes_sent = 0
        self._answered = 0

    def send(self, requests: Sequence[Dict[str, Any]], *, sent: bool = False) -> List[Dict[str, Any]]:
        """``sent``: the requests already went out (on the command line that started the script)."""
        if not sent:
            with self._writing:
                self.pipe.write(b"".join(json.dumps(r).encode() + b"\n" for r in requests))
        return [self._answer() for _ in requests]

    def keepalive(self, every: float) -> None:
        """Ping the device every ``every`` seconds while nothing else is being sent: the release
        script beats the lock only while it hears from us (a partitioned host must let it go stale),
        and we may be quiet for long (reading a slow disk, a caller's pause) without being gone."""
        def run() -> None:
            while not self._stop.wait(every):
                if self._writing.acquire(blocking=False):  # busy writing: that traffic says we are here
                    try:
                        self.pipe.write(b'{"op": "ping"}\n')
                    except DeviceError:
                        return
                    finally:
                        self._writing.release()
        threading.Thread(target=run, name=f"edgekit-keepalive-{self.name}", daemon=True).start()

    def _answer(self) -> Dict[str, Any]:
        line = self.pipe.readline(ANSWER_LIMIT + 1)
        if not line.endswith(b"\n"):
            if len(line) > ANSWER_LIMIT:
                raise DeviceError(f"device '{self.name}': an answer of the release script is over "
                                  f"{ANSWER_LIMIT >> 20} MB", kind="bad_answer")
            why = self.pipe.ended()
            if not self._answered and why.startswith(("exit 126", "exit 127")):
                raise DeviceError(f"device '{self.name}': cannot run the release script ({why})",
                                  kind="no_python")
            raise DeviceError(f"device '{self.name}': connection lost (the release script stopped: "
                              f"{why or 'end of stream'})", hint="check the network and the device",
                              kind="connection_lost")
        try:
            answer = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            answer = None
        if not isinstance(answer, dict):
            raise DeviceError(f"device '{self.name}': the release script answered {line[:80]!r}", kind="bad_answer")
        self._answered += 1
        if isinstance(answer.get("root"), str) and answer.get("ok"):
            self.root = answer["root"]
        return answer

    def upload(self, release_id: str, owner: str, files: Sequence[Tuple[Path, str]]) -> int:
        sized = [(Path(local), name, Path(local).stat().st_size) for local, name in files]
        head = {"op": "upload", "owner": owner, "release_id": release_id,
                "files": [[name, size] for _, name, size in sized]}
        sent = 0
        with self._writing:
            self.pipe.write(json.dumps(head).encode() + b"\n")
            for local, _, size in sized:
                with open(local, "rb") as f:
                    left = size
                    while left:  # exactly the size announced: the device reads that many bytes
                        block = f.read(min(CHUNK, left))
                        if not block:
                            raise DeviceError(f"{local}: shorter than when the upload began")
                        self.pipe.write(block)
                        left -= len(block)
                        sent += len(block)
        self.bytes_sent += sent
        answer = self._answer()
        if not answer.get("ok"):
            raise DeviceError(f"device '{self.name}': {answer.get('error', 'upload failed')}",
                              kind=str(answer.get("kind") or "write_failed"), no_space=bool(answer.get("no_space")),
                              free=answer.get("free"))
        return sent

    def close(self) -> None:
        self._stop.set()
        with self._writing:
            self.pipe.close()


class ProcessPipe(Pipe):
    """A local child process as the link (``ssh -S <ControlPath> host <command>``, a toy device)."""

    def __init__(self, argv: Sequence[str], name: str) -> None:
        self.name = name
        try:
            self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE)
        except OSError as exc:
            raise DeviceError(f"device '{name}': cannot run {argv[0]}: {exc.strerror}", kind="connection_lost") from None

    def write(self, data: bytes) -> None:
        try:
            self.proc.stdin.write(data)  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, ValueError) as exc:
            raise DeviceError(f"device '{self.name}': connection lost ({exc})", kind="connection_lost") from None

    def readline(self, limit: int) -> bytes:
        return self.proc.stdout.readline(limit)  # type: ignore[union-attr]

    def ended(self) -> str:
        try:
            code = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            return "no exit status"
        tail = self.proc.stderr.read(1 << 16).decode("utf-8", "replace").strip().splitlines()  # type: ignore[union-attr]
        return f"exit {code}" + (f": {tail[-1][:200]}" if tail else "")

    def close(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()  # end of input ends the session
            self.proc.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
        for f in (self.proc.stdout, self.proc.stderr):
            if f:
                f.close()

