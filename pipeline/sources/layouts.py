"""Every dataset layout by name (the ``manifest.layout`` param).

Importing this module imports each layout module, so the registry is complete; the layout
modules themselves only import :mod:`pipeline.sources.scan`, which keeps the imports acyclic.
"""

from __future__ import annotations

from pipeline.sources import scan_real  # noqa: F401  (registers the real-data layouts)
from pipeline.sources.scan import LAYOUTS, Scanner


def get_layout(name: str) -> Scanner:
    """The scanner registered under ``name``; an unknown name raises ``ValueError``."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown manifest.layout {name!r}; known: {', '.join(sorted(LAYOUTS))}")
    return LAYOUTS[name]
