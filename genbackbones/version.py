"""The package version, and the library versions every run, export and evaluation records."""

from __future__ import annotations

import platform

__version__ = "0.1.0"


def versions() -> dict[str, str]:
    """genbackbones / torch / timm / Python versions, for provenance (imports torch and timm)."""
    import timm
    import torch

    return {"genbackbones": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version()}
