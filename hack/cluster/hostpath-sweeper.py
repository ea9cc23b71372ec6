#!/usr/bin/env python3
"""Make each new directory under DIR world-writable as it appears (inotify, no polling).

The in-tree hostPath provisioner of the local cluster creates volume directories with mode 0750
owned by root; the worker pods run as uid 10001. Usage: hostpath-sweeper.py DIR
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys

IN_CREATE, IN_MOVED_TO, IN_ONLYDIR, IN_ISDIR = 0x100, 0x80, 0x01000000, 0x40000000
EVENT = struct.Struct("iIII")


def sweep(root: str, name: str | None = None) -> None:
    names = [name] if name else os.listdir(root)
    for n in names:
        p = os.path.join(root, n)
        try:
            if os.path.isdir(p) and (os.stat(p).st_mode & 0o777) != 0o777:
                os.chmod(p, 0o777)
        except OSError:
            pass  # gone again


def main() -> int:
    root = sys.argv[1]
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_CLOEXEC)
    if fd < 0 or libc.inotify_add_watch(fd, root.encode(), IN_CREATE | IN_MOVED_TO | IN_ONLYDIR) < 0:
        print(f"inotify on {root}: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 1
    sweep(root)  # what existed before the watch
    while True:
        buf = os.read(fd, 65536)
        off = 0
        while off < len(buf):
            _, mask, _, length = EVENT.unpack_from(buf, off)
            name = buf[off + EVENT.size : off + EVENT.size + length].rstrip(b"\0").decode()
            off += EVENT.size + length
            if mask & IN_ISDIR and name:
                sweep(root, name)


if __name__ == "__main__":
    sys.exit(main())
