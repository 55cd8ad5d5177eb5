"""A read-only FUSE passthrough of SOURCE at MOUNT where every call takes DELAY
seconds, like a network filesystem's round trip, and blocks for as long as the
file HANG exists, like a hung NFS server (the caller waits in the kernel).
Every call is counted in COUNTER (one line "calls <n>", rewritten each 0.2 s).

    python slowfs.py SOURCE MOUNT DELAY HANG COUNTER

Runs in the foreground until unmounted (fusermount -u MOUNT) or killed."""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from typing import Any

from fuse import FUSE, FuseOSError, Operations


class SlowPassthrough(Operations):  # type: ignore[misc]
    def __init__(self, root: str, delay: float, hang: str, counter: str) -> None:
        self.root, self.delay, self.hang, self.counter = root, delay, hang, counter
        self.calls = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._report, daemon=True).start()

    def _report(self) -> None:
        while True:
            with open(self.counter + ".tmp", "w") as f:
                f.write(f"calls {self.calls}\n")
            os.replace(self.counter + ".tmp", self.counter)
            time.sleep(0.2)

    def __call__(self, op: str, *args: Any) -> Any:
        with self._lock:
            self.calls += 1
        while os.path.exists(self.hang):
            time.sleep(0.05)
        time.sleep(self.delay)
        return super().__call__(op, *args)

    def _p(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        try:
            st = os.lstat(self._p(path))
        except OSError as exc:
            raise FuseOSError(exc.errno) from None
        return {k: getattr(st, k) for k in ("st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink",
                                             "st_size", "st_uid")}

    def readdir(self, path: str, fh: int) -> list[str]:
        try:
            return [".", "..", *os.listdir(self._p(path))]
        except OSError as exc:
            raise FuseOSError(exc.errno) from None

    def statfs(self, path: str) -> dict[str, Any]:
        st = os.statvfs(self._p(path))
        return {k: getattr(st, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                                             "f_files", "f_flag", "f_frsize", "f_namemax")}

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise FuseOSError(errno.EROFS)
        return os.open(self._p(path), flags)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        os.lseek(fh, offset, os.SEEK_SET)
        return os.read(fh, size)

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0


if __name__ == "__main__":
    src, mnt, delay, hang, counter = sys.argv[1:6]
    # Kernel caches off: every call of the walk reaches this process (a network
    # filesystem's cache would hide nothing a first walk does).
    FUSE(SlowPassthrough(src, float(delay), hang, counter), mnt, foreground=True, ro=True, nothreads=False,
         attr_timeout=0, entry_timeout=0, negative_timeout=0)
