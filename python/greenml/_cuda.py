"""CUDA at window edges: wait for queued work, only when torch is already imported and CUDA
initialised (torch is never imported to find out)."""

from __future__ import annotations

import sys


def sync_cuda() -> None:
    """Waits for queued CUDA work, only when torch is already imported and CUDA initialised."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    cuda = getattr(torch, "cuda", None)
    if cuda is not None and cuda.is_initialized():
        cuda.synchronize()
