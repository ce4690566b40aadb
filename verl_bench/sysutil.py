"""Process-level helpers: peak memory (per trial when a process runs several), giving freed memory back,
glibc's allocator, writable folders, the torch device."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import resource
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from verl_bench.errors import UserError

if TYPE_CHECKING:
    import torch

_STATUS = "/proc/self/status"


def _status_kib(field: str) -> int | None:
    """A ``VmXXX`` line of /proc/self/status in KiB (None off Linux)."""
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_gb() -> float:
    """The process's peak resident memory since it started or since the last :func:`reset_peak_memory`.

    Read from VmHWM, which Linux lets a process reset (``ru_maxrss`` never goes down: in a process that runs
    one sweep trial after another it would report the largest trial so far, not this one's peak).
    """
    hwm = _status_kib("VmHWM")
    if hwm is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    return hwm / 2**20


def rss_gb() -> float:
    """Resident memory now (0.0 where /proc is not available)."""
    return (_status_kib("VmRSS") or 0) / 2**20


def reset_peak_memory() -> bool:
    """Start a new peak: VmHWM drops to the current RSS (writing 5 to /proc/self/clear_refs, Linux >= 4.0),
    and torch's CUDA peak statistics restart. Returns whether the RSS peak could be reset."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_memory() -> None:
    """Give what dropped objects held back to the system: collect reference cycles, hand glibc's free pages
    back to the kernel (every arena: a reused sweep process runs each trial on a new thread, and with
    :func:`keep_freed_memory` each arena would keep up to its limit for a thread that is gone), and empty
    torch's CUDA cache."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Ask glibc to keep freed blocks under ``limit`` bytes for reuse instead of returning them to the OS.

    By default a block over ~32 MB is mmap'ed and unmapped on free, so each scoring micro-batch's activations
    and gradients land on fresh pages the kernel must fault in and zero: about a fifth of the update's time on
    2 CPU cores (benchmarks/grpo_step.py), for a few hundred MB of peak RSS kept. No-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, limit)) and bool(libc.mallopt(m_trim_threshold, limit))


@contextlib.contextmanager
def file_lock(lock_path: Path, on_wait=None):
    """An exclusive inter-process lock on ``lock_path`` (fcntl.flock), held for the ``with`` block and
    released by the kernel if the holder dies. ``on_wait()`` is called once when another process holds it.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX: only the callers' atomic renames guard
            yield
            return
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def unwritable(folder: str | os.PathLike) -> str | None:
    """Why files cannot be written in ``folder`` (created on demand), or None when they can.

    Checked on the nearest folder that exists, by creating and removing a file there (root passes any
    permission check, so only a real write tells); creates nothing that stays.
    """
    path = Path(folder).expanduser().absolute()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        return "no part of the path exists"
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        fd, probe = tempfile.mkstemp(prefix=".verl_bench_write_check_", dir=existing)
    except OSError as e:
        return f"cannot write in {existing}: {e.strerror or e}"
    os.close(fd)
    os.unlink(probe)
    return None


def require_writable(folder: str | os.PathLike, where: str) -> None:
    """A ``UserError`` (``where``: the file:line: key or the flag that named ``folder``) unless files can be
    written in ``folder``: refused before anything starts rather than when the first result is saved."""
    why = unwritable(folder)
    if why:
        raise UserError(f"{where}: cannot write in {str(folder)!r}: {why}")


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU; anything else is a torch device name."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
