"""One process at a time in a run directory: an exclusive OS lock on `<dir>/.lock`.

Two `softprompt train` processes writing into one `training.output_dir` would interleave
their metrics, checkpoints and `best/`, and a `--resume auto` of one would continue the
other's checkpoint. So a run holds an exclusive lock on its directory from before it
checks the directory for an earlier run until its last write; `sweep` and `compare` hold
one on their output directory too, and each of their runs takes its own. A second
process stops at once, naming the PID that holds the lock.

The lock is the kernel's (`flock`; `msvcrt.locking` on Windows), not the file's
existence: it goes with the process that holds it, so a run killed by SIGKILL or a power
cut never leaves a stale lock behind. The file holds the holder's PID for the message and
is removed when the lock is given back. Where the filesystem cannot lock at all (some
network filesystems) the run goes on with a warning: it would not be safer refused.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from softprompt.errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

logger = logging.getLogger("softprompt")

LOCK_FILE = ".lock"
# A holder that removes the file while we lock it makes us lock a removed file; we then
# open the new one. Each retry means another process took and gave back the lock.
MAX_ATTEMPTS = 20
# Windows locks a byte range and refuses reads of it: the lock sits past the PID text.
_WINDOWS_LOCK_OFFSET = 1 << 20
# What a lock call fails with when another process holds the lock.
_HELD = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, errno.EDEADLK)


class RunDirInUse(UserError):
    """Another process holds the lock of the directory; the message names its PID."""


class RunLock:
    """The exclusive lock of one directory, taken with `acquire` and given back with `release`.

    Args:
        directory: the directory to lock (created if missing).
        label: how the message names the directory's setting (`training.output_dir`,
            `--output-dir`).
    """

    def __init__(self, directory: str | Path, label: str = "training.output_dir") -> None:
        self.directory = Path(directory)
        self.label = label
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock, or raise at once if another process holds it.

        Raises:
            RunDirInUse: another process holds it (the message names its PID).
            UserError: the directory is a file.
        """
        if self.directory.exists() and not self.directory.is_dir():
            raise UserError(f"{self.label} {str(self.directory)!r} is a file, not a directory")
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(MAX_ATTEMPTS):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not self._lock_or_close(fd):
                return self  # the filesystem cannot lock: warned, unlocked
            if _same_file(fd, self.path):
                self._fd = fd
                _write_pid(fd)
                return self
            os.close(fd)  # locked a file its holder had just removed: lock the new one
        raise RunDirInUse(self._in_use_message())

    def release(self) -> None:
        """Give the lock back (removing the file first, while it is still ours)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)  # closing the last descriptor releases the kernel's lock
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _lock_or_close(self, fd: int) -> bool:
        """Lock `fd`; False when the filesystem cannot lock (warned). Raises when held."""
        try:
            _lock(fd)
            return True
        except OSError as err:
            os.close(fd)
            if err.errno in _HELD:
                raise RunDirInUse(self._in_use_message()) from None
            logger.warning(
                "Cannot lock %s (%s): another process writing into %s would not be stopped",
                self.path,
                err.strerror or err,
                self.directory,
            )
            return False

    def _in_use_message(self) -> str:
        pid = read_holder_pid(self.path)
        holder = f"PID {pid}" if pid is not None else "a process that is starting"
        return (
            f"{self.label} {str(self.directory)!r} is in use by another softprompt process "
            f"({holder}, holding {self.path.name}); wait for it to finish or stop it, "
            f"or choose another {self.label}"
        )


def read_holder_pid(path: Path) -> int | None:
    """The PID a lock file holds; None when it is empty, missing or not a number."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def run_dir_lock(directory: str | Path, *, main: bool = True) -> Iterator[RunLock | None]:
    """Hold the directory's lock for the `with` block; only in the main process.

    The processes of one data-parallel launch share the directory, and only the main
    one writes to it: it alone locks, so they never lock each other out, while a second
    launch's main process is refused (and the launcher stops its other processes).
    """
    if not main:
        yield None
        return
    with RunLock(directory) as lock:
        yield lock


def _lock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except OSError:
        return False
    opened = os.fstat(fd)
    return (opened.st_dev, opened.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _write_pid(fd: int) -> None:
    with contextlib.suppress(OSError):  # the PID only makes the message better
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
