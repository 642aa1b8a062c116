"""avmatch models: networks, losses, trainer, evaluation, and the feature-store readers.

Importing the package imports nothing heavy: ``model.cswin`` registers the CSWin variants with
timm when it is imported, and ``model.stores`` reads the HDF5 stores without torch.
"""
