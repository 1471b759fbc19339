"""Run a command and pass on a bounded copy of its output: the first and the last LIMIT bytes of
each stream, with a note of how much was left out between them.

It runs on the device (standard library only, Python >= 3.8), wrapped around runner.py by
``edgekit validate``: a runner that prints hundreds of megabytes (a hostile bundle, or a runtime
stuck in a logging loop) then costs the host 2 x 2 x LIMIT bytes, not the whole stream, over
either transport, and the output is cut where it is made instead of being sent first. The host
imports :class:`HeadTail` too (the SSH transport bounds every command's output with it).

    python3 -c "<this file>" LIMIT TIMEOUT -- ARGV...

exits with the command's status (128 + N for a signal, 124 when TIMEOUT seconds passed first).
"""
import os
import subprocess
import sys
import threading

CHUNK = 1 << 16


class HeadTail(object):
    """The first ``limit`` bytes fed, and the last ``limit``; what lay between is only counted."""

    def __init__(self, limit):
        self.limit = max(0, int(limit))
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def feed(self, data):
        room = self.limit - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            extra = len(self.tail) - self.limit
            if extra > 0:
                del self.tail[:extra]
                self.dropped += extra

    def __len__(self):
        return len(self.head) + len(self.tail)

    def getvalue(self):
        if not self.dropped:
            return bytes(self.head + self.tail)
        note = ("\n[... %d bytes of output left out ...]\n" % self.dropped).encode("ascii")
        return bytes(self.head) + note + bytes(self.tail)


def _drain(stream, keep):
    fd = stream.fileno()
    while True:
        data = os.read(fd, CHUNK)
        if not data:
            return
        keep.feed(data)


def main(argv):
    limit, timeout = int(argv[0]), float(argv[1])
    if argv[2] != "--" or len(argv) < 4:
        sys.stderr.write("usage: bounded LIMIT TIMEOUT -- ARGV...\n")
        return 2
    try:
        proc = subprocess.Popen(argv[3:], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        sys.stderr.write("cannot run %s: %s\n" % (argv[3], exc.strerror or exc))
        return 127
    out, err = HeadTail(limit), HeadTail(limit)
    readers = [threading.Thread(target=_drain, args=(proc.stdout, out)),
               threading.Thread(target=_drain, args=(proc.stderr, err))]
    for t in readers:
        t.daemon = True
        t.start()
    timed_out = False
    try:
        code = proc.wait(timeout=timeout if timeout > 0 else None)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code, timed_out = 124, True
    for t in readers:
        t.join(5)  # a grandchild holding the pipes open must not hold us too
    if timed_out:
        err.feed(("\nstopped after %.0f s\n" % timeout).encode("ascii"))
    sys.stdout.buffer.write(out.getvalue())
    sys.stderr.buffer.write(err.getvalue())
    sys.stdout.flush()
    sys.stderr.flush()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
