"""Torch runtime helpers shared by every stage that runs a network: device and thread control."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pipeline.common.parallel import resolve_workers


@contextlib.contextmanager
def torch_runtime(threads: int, deterministic: bool = True) -> Iterator[None]:
    """Set torch's intra-op threads (0 = all cores) and deterministic mode; restore afterwards."""
    import torch

    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(resolve_workers(threads))
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
