"""The `pretrained_cfg` an export carries: the truth about the weights, not the architecture's defaults.

Kept apart from export.py (which imports torch and huggingface_hub) because the zoo
registers its entries with timm while timm itself is still being imported.
"""

from __future__ import annotations


def pretrained_cfg_for(arch: str, input_size: int, mean, std, license: str, tag: str) -> dict:
    """The truth about these weights; only structural fields come from timm's default cfg."""
    import timm

    default = timm.models.get_pretrained_cfg(arch.split(".")[0])
    default = default.to_dict() if default is not None else {}
    return {
        "tag": tag,
        "custom_load": False,
        "input_size": [3, input_size, input_size],
        "fixed_input_size": bool(default.get("fixed_input_size", False)),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": list(mean),
        "std": list(std),
        "num_classes": 0,
        "pool_size": None,
        "first_conv": default.get("first_conv", ""),
        "classifier": default.get("classifier", ""),
        "license": license,
    }
