"""The perceptual distance of GH-Feat: VGG16 conv4_3 features (paper 001, eq. 2).

The weights are timm's `vgg16.tv_in1k` (torchvision's ImageNet VGG16), taken from
the Hugging Face repo `timm/vgg16.tv_in1k` in the local cache (downloaded there
when online). Only conv1_1 .. conv4_3 are built and read, under timm's key names
(`features.<i>.*`), and they are loaded strictly: a perceptual loss computed with
random VGG weights is not a perceptual loss, so there is no fallback. When the
weights are absent the run stops with a message saying how to provide them, or
that the recipe must say `ghfeat.perceptual: none` explicitly.

Scale note: the paper's weight (5e-5) multiplies features of Keras' VGG16, which
takes 0-255 BGR inputs with the mean subtracted; torchvision's weights take
ImageNet-standardised inputs and give much smaller activations, so the same
number weighs the perceptual term less here than in the paper.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import UserError, first_line

VGG_NAME = "vgg16.tv_in1k"
VGG_HUB_ID = "timm/vgg16.tv_in1k"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONV4_3_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512)  # VGG16 up to conv4_3


def vgg16_to_conv4_3() -> nn.Sequential:
    """VGG16's `features` up to conv4_3 and its ReLU, indexed like timm's / torchvision's `features`."""
    layers: list[nn.Module] = []
    channels = 3
    for item in CONV4_3_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU()]
            channels = item
    return nn.Sequential(*layers)


def cached_weights(repo_id: str = VGG_HUB_ID) -> str | None:
    """Path of the weights file in the local Hugging Face cache, or None (never touches the network)."""
    from huggingface_hub import try_to_load_from_cache

    for name in WEIGHT_FILES:
        path = try_to_load_from_cache(repo_id, name)
        if isinstance(path, str):
            return path
    return None


def missing_weights_message(reason: str) -> str:
    return (f"VGG16 weights for the perceptual loss ({VGG_NAME}) are not available ({reason}); on a machine with "
            f"internet run `huggingface-cli download {VGG_HUB_ID}` and copy its Hugging Face cache "
            "(~/.cache/huggingface, or $HF_HOME) here, or set ghfeat.perceptual: none in the recipe")


def weights_file() -> str:
    """The cached weights, else a download into the cache when online; UserError when neither works."""
    from huggingface_hub import constants, hf_hub_download

    from ...offline import hub_reachable

    path = cached_weights()
    if path is not None:
        return path
    if constants.HF_HUB_OFFLINE:
        raise UserError(missing_weights_message("not in the Hugging Face cache and HF_HUB_OFFLINE is set"))
    if not hub_reachable():
        raise UserError(missing_weights_message(f"not in the Hugging Face cache and {constants.ENDPOINT} cannot "
                                                "be reached"))
    try:
        return hf_hub_download(VGG_HUB_ID, WEIGHT_FILES[0])
    except Exception as err:  # no network, no such file
        raise UserError(missing_weights_message(f"{type(err).__name__}: {first_line(err, 100)}")) from None


def read_state(path: str, keys: list[str]) -> dict[str, torch.Tensor]:
    """Only `keys` from a safetensors or PyTorch weights file (the classifier is never loaded)."""
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                present = set(f.keys())
                return {k: f.get_tensor(k) for k in keys if k in present}
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return {k: state[k] for k in keys if k in state}
    except Exception as err:
        raise UserError(missing_weights_message(f"{path} is unreadable: {type(err).__name__}")) from None


def load_vgg16_conv4_3(path: str | None = None) -> nn.Sequential:
    """conv1_1 .. conv4_3 with the tv_in1k weights, loaded strictly (every layer or an error)."""
    path = path or weights_file()
    features = vgg16_to_conv4_3()
    keys = [f"features.{k}" for k in features.state_dict()]
    state = read_state(path, keys)
    missing = [k for k in keys if k not in state]
    if missing:
        raise UserError(missing_weights_message(f"{path} has no {missing[0]}: not VGG16 weights"))
    features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()})
    return features


def imagenet_mean_std() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The normalisation the tv_in1k weights expect (timm's pretrained_cfg)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(VGG_NAME)
    return tuple(cfg.mean), tuple(cfg.std)


class VGGConv4_3(nn.Module):
    """Frozen VGG16 up to conv4_3 (+ReLU, Keras' block4_conv3) for images in [-1, 1]; stride 8, 512 channels."""

    channels = 512
    stride = 8

    def __init__(self, features: nn.Sequential | None = None):
        super().__init__()
        self.features = features if features is not None else load_vgg16_conv4_3()
        mean, std = imagenet_mean_std()
        self.register_buffer("mean", torch.tensor(mean).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).reshape(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> VGGConv4_3:
        return super().train(False)  # a fixed function: never in training mode

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.features(((img + 1) / 2 - self.mean) / self.std)


def perceptual_distance(net: VGGConv4_3, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of conv4_3 features (gradients flow into both images)."""
    return (net(a) - net(b)).square().mean()
