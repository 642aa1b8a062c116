"""avmatch pipeline stages: one module per DVC stage, exposed through the ``avmatch`` CLI."""

from pipeline.common.blas import pin_mkl_reproducibility

pin_mkl_reproducibility()  # before any tensor work: MKL reads it once (pipeline/common/blas.py)
