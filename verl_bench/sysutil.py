"""Process-level helpers the training loop uses: peak memory, glibc's allocator, the torch device."""

from __future__ import annotations

import ctypes
import resource

import torch


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


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


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU; anything else is a torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
