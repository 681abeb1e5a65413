"""Bundled data domains. `faces`: procedural stylised faces with masks, landmarks and attributes."""

from .faces import (
    ATTRIBUTES,
    GLASSES_RATE,
    LANDMARK_NAMES,
    PALETTE,
    SEG_CLASSES,
    SPLITS,
    FaceDomain,
    FaceSample,
    colorize_mask,
    render_batch,
    render_face,
    to_tensor,
)

__all__ = [
    "ATTRIBUTES",
    "GLASSES_RATE",
    "LANDMARK_NAMES",
    "PALETTE",
    "SEG_CLASSES",
    "SPLITS",
    "FaceDomain",
    "FaceSample",
    "colorize_mask",
    "render_batch",
    "render_face",
    "to_tensor",
]
