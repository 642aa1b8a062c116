"""The face-attribute classifier: input scaling, batched prediction, checkpoint save and load.

Shared by the ``face_attributes_train`` stage (which trains and saves it) and the
``face_attributes`` stage (which loads it and predicts every stored face).
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.common.io import atomic_file

if TYPE_CHECKING:
    import torch

CHECKPOINT_FORMAT = 1


def to_input(batch: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...],
             dev: str | torch.device = "cpu") -> torch.Tensor:
    """``(B, S, S, 3)`` uint8 RGB -> ``(B, 3, S, S)`` float32, ``(x / 255 - mean) / std``."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(batch)).to(dev)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, S, S) in [0, 1]
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)  # (1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)  # (1, 3, 1, 1)
    return (x - m) / s


def predict(net: torch.nn.Module, read: Any, n: int, batch_size: int, mean: tuple[float, ...],
            std: tuple[float, ...], desc: str | None = None) -> np.ndarray:
    """Sigmoid probabilities ``(n, classes)`` for rows ``read(start, stop)`` of uint8 images."""
    import torch
    from tqdm.auto import tqdm

    dev = next(net.parameters()).device
    net.eval()
    out = []
    with torch.inference_mode():
        for start in tqdm(range(0, n, batch_size), desc=desc, disable=desc is None, unit="batch"):
            logits = net(to_input(read(start, min(start + batch_size, n)), mean, std, dev))
            out.append(torch.sigmoid(logits.float()).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def save_classifier(path: str | os.PathLike, net: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Save weights plus everything needed to rebuild the model (tensors and primitives only)."""
    import torch

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    buffer = io.BytesIO()  # saving to a file would name the archive after the (random) temp file
    torch.save({"format_version": CHECKPOINT_FORMAT, **meta, "state_dict": state}, buffer)
    with atomic_file(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_classifier(path: str | os.PathLike, dev: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the classifier saved by :func:`save_classifier` (``weights_only=True``)."""
    import timm
    import torch

    import model.cswin  # noqa: F401  (registers the CSWin variants)

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("format_version") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a face-attribute checkpoint (format "
                         f"{ckpt.get('format_version')!r}, expected {CHECKPOINT_FORMAT})")
    net = timm.create_model(ckpt["model_name"], **ckpt["model_args"])
    net.load_state_dict(ckpt.pop("state_dict"), strict=True)
    return net.to(dev).eval(), ckpt
