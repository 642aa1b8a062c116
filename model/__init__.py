"""avmatch models: networks, losses, trainer, evaluation, and the feature-store readers.

Importing the package imports nothing heavy: ``model.cswin`` registers the CSWin variants with
timm when it is imported, and ``model.stores`` reads the HDF5 stores without torch.
"""

from pipeline.common.blas import pin_mkl_reproducibility

pin_mkl_reproducibility()  # before any tensor work: MKL reads it once (pipeline/common/blas.py)
