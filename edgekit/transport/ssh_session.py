"""The SSH transport's release session: edgekit/device/release.py run on the device in ONE exec.

Round trips after the connection is up: one to open the channel; the exec request is sent without
waiting for its reply, followed at once by lock+prepare (one round trip for all three); the upload
streams the files on the same channel (one answer at the end); commit+unlock (one). An unchanged
redeploy is open, exec+lock+prepare, commit+unlock: three.

A device without Python answers the exec with status 127: the session then falls back to the same
release logic run on the host over SFTP (FilesSession), slower but complete.
"""
from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import paramiko
from paramiko.common import cMSG_CHANNEL_REQUEST
from paramiko.message import Message

from ..device.bounded import HeadTail
from ..device.release import PARTIAL
from ..errors import DeviceError
from . import FilesSession, ReleaseSession
from .script_session import Pipe, ProcessPipe, ScriptSession, fits_command_line, script_command

if TYPE_CHECKING:  # pragma: no cover
    from .ssh import SSHTransport

SESSION_TIMEOUT = 900.0
"""Seconds one answer may take (hashing a large release on a slow board included)."""


class ChannelPipe(Pipe):
    def __init__(self, t: "SSHTransport", command: str) -> None:
        self.t = t
        try:
            self.chan = t.client.get_transport().open_session(timeout=t.connect_timeout)  # type: ignore[union-attr]
            self.chan.settimeout(SESSION_TIMEOUT)
            # exec without want_reply: the requests that follow go out in the same flight, and the
            # server handles them in order (a failed exec shows as the channel's exit status).
            m = Message()
            m.add_byte(cMSG_CHANNEL_REQUEST)
            m.add_int(self.chan.remote_chanid)
            m.add_string("exec")
            m.add_boolean(False)
            m.add_string(command)
            self.chan.transport._send_user_message(m)  # type: ignore[union-attr]
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise t._lost(exc) from None
        self.buf = bytearray()
        self.err = HeadTail(1 << 16)

    def write(self, data: bytes) -> None:
        try:
            self.chan.sendall(data)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self.t._lost(exc) from None

    def readline(self, limit: int) -> bytes:
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0 or len(self.buf) >= limit:
                end = nl + 1 if nl >= 0 else limit
                line, self.buf = bytes(self.buf[:end]), self.buf[end:]
                return line
            try:
                block = self.chan.recv(1 << 16)
            except socket.timeout:
                raise DeviceError(f"device '{self.t.name}': the release script gave no answer within "
                                  f"{SESSION_TIMEOUT:.0f} s", kind="timeout") from None
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise self.t._lost(exc) from None
            if not block:
                line, self.buf = bytes(self.buf), bytearray()
                return line
            self.buf += block

    def ended(self) -> str:
        try:
            while self.chan.recv_stderr_ready():
                self.err.feed(self.chan.recv_stderr(1 << 16))
            if not self.t.connected:
                return "the connection dropped"
            code = self.chan.recv_exit_status() if self.chan.status_event.wait(2.0) else None
        except (paramiko.SSHException, OSError, EOFError):
            return "the connection dropped"
        tail = self.err.getvalue().decode("utf-8", "replace").strip().splitlines()
        return f"exit {code}" + (f": {tail[-1][:200]}" if tail else "") if code is not None else "no exit status"

    def close(self) -> None:
        try:
            self.chan.close()
        except Exception:  # noqa: BLE001 - closing a dead channel must not mask the real error
            pass


class SshRelease(ReleaseSession):
    """Release operations on an SSH device: the script over one channel, or SFTP without Python."""

    def __init__(self, t: "SSHTransport") -> None:
        self.t = t
        self.impl: Optional[ReleaseSession] = None
        self._rid: Optional[str] = None
        self._owner = ""
        self.via_master: Optional[str] = None
        """The ControlPath of the OpenSSH master this session ran through, if it did."""

    def send(self, requests: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
        fresh = self.impl is None
        try:
            if self.impl is None:
                # The first requests ride on the exec's command line: the channel's window is 0 until
                # sshd has started the command, so data sent with the exec would wait a round trip.
                first = list(requests) if fits_command_line(requests) else []
                command = script_command(self.t.python, self.t._path, first)
                master = self.t.control_master()
                if master:  # the user's OpenSSH master carries it: no handshake of our own
                    ep = self.t.endpoint
                    pipe: Pipe = ProcessPipe(["ssh", "-S", master, "-o", "ControlMaster=no", "-o", "BatchMode=yes",
                                              "-p", str(ep.port), "-l", ep.user, "--", ep.hostname, command], self.t.name)
                    self.via_master = master
                else:
                    pipe = ChannelPipe(self.t, command)
                self.impl = ScriptSession(self.t.name, pipe)
                answers = self.impl.send(requests, sent=bool(first))
            else:
                answers = self.impl.send(requests)
        except DeviceError as exc:
            if not (fresh and exc.details.get("kind") == "no_python"):
                raise
            self.impl.close()  # type: ignore[union-attr]
            self.impl = FilesSession(self.t)  # no Python there: the same logic over SFTP
            answers = self.impl.send(requests)
        impl = self.impl
        if isinstance(impl, ScriptSession) and impl.root and self.t._root is None:
            self.t._root = impl.root  # the device resolved ~ for us: no SFTP request needed
        return answers

    def keepalive(self, every: float) -> None:
        if self.impl is not None:
            self.impl.keepalive(every)

    def upload(self, release_id: str, owner: str, files: Sequence[Tuple[Path, str]]) -> int:
        # Through put_many, so its callers (and tests) see every deploy upload; put_many hands the
        # files back to stream() while this session is the transport's current stream.
        self._rid, self._owner = release_id, owner
        self.t._stream = self if isinstance(self.impl, ScriptSession) else None
        try:
            return self.t.put_many([(local, self.t.path(f"releases/{release_id}{PARTIAL}", name))
                                    for local, name in files])
        finally:
            self.t._stream = None

    def takes(self, pairs: Sequence[Tuple[Path, str]]) -> bool:
        base = self.t.path(f"releases/{self._rid}{PARTIAL}") + "/"
        return all(remote.startswith(base) for _, remote in pairs)

    def stream(self, pairs: Sequence[Tuple[Path, str]]) -> int:
        base = self.t.path(f"releases/{self._rid}{PARTIAL}") + "/"
        assert isinstance(self.impl, ScriptSession) and self._rid
        sent = self.impl.upload(self._rid, self._owner, [(local, remote[len(base):]) for local, remote in pairs])
        self.t.bytes_sent += sent
        return sent

    def close(self) -> None:
        if self.impl is not None:
            self.impl.close()
