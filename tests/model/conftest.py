"""The data-tree fixtures live in ``tests/conftest.py`` (the stage tests use them too)."""

from tests.conftest import build_data_tree, learnable_data, tiny_data  # noqa: F401
