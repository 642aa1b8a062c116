"""Thread-count-independent BLAS results: pin Intel MKL's conditional numerical reproducibility.

PyTorch's x86 wheels do float32 matrix products in Intel MKL. By default MKL picks its kernels
by CPU and splits each product by thread count, so one model gives outputs that differ in the last
bit with 1 and 2 threads on an AVX-512 Xeon, and ``face_attributes.threads`` changed the
attribute table's bytes. ``MKL_CBWR=AVX2,STRICT`` makes MKL use its AVX2 code
path on every CPU that has AVX2, and makes it reduce in the same order whatever the thread count.

MKL reads the variable once, at its first call. So the packages ``pipeline`` and ``model`` set it
when they are imported, before any tensor work. A value the user already exported is kept: for
example ``MKL_CBWR=AUTO`` trades that reproducibility for MKL's fastest kernels. The variable
changes nothing where there is no MKL (aarch64 wheels, CUDA kernels).
"""

from __future__ import annotations

import os

MKL_CBWR = "AVX2,STRICT"


def pin_mkl_reproducibility() -> str:
    """Set ``MKL_CBWR`` unless the user set it; the value in force."""
    return os.environ.setdefault("MKL_CBWR", MKL_CBWR)
