"""MKL reproducibility pin: set on import, user value kept, products independent of thread count."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.common.blas import MKL_CBWR

ROOT = Path(__file__).resolve().parents[3]

# A generator-shaped product (64 x 3200 -> 128): MKL splits its long inner dimension across
# threads, which without the pin changes the last bits on an AVX-512 Xeon.
PRODUCT = """
import os
import {package}
import torch
g = torch.Generator().manual_seed(0)
x, w, b = torch.randn(64, 3200, generator=g), torch.randn(128, 3200, generator=g), torch.randn(128, generator=g)
outs = []
for threads in (1, 2):
    torch.set_num_threads(threads)
    outs.append(torch.nn.functional.linear(x, w, b))
print(os.environ.get("MKL_CBWR"), torch.equal(*outs))
"""


def _run(code: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**base, **env},
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_importing_either_package_pins_mkl_and_products_ignore_thread_count() -> None:
    for package in ("pipeline", "model"):
        assert _run(PRODUCT.format(package=package)) == f"{MKL_CBWR} True"


def test_a_value_the_user_exported_is_kept() -> None:
    assert _run("import os, model; print(os.environ['MKL_CBWR'])", MKL_CBWR="AUTO") == "AUTO"
