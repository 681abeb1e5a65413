"""Semantic extractors: generator activations -> per-pixel class logits.

Every extractor has one interface, `forward(acts) -> logits [N, C, H, W]` at the
generator's image resolution, where `acts` maps layer names to activations at their
own resolution (`activations.generate`). The kinds:

- `linear` — paper 004's Linear Semantic Extractor (LSE): a 1x1 map per layer, each
  upsampled (bilinear) to the image and summed. Linear in the activations, so what it
  finds is what the generator encodes linearly.
- `nonlinear` — paper 004's NSE-1: per layer three 3x3 convolutions with ReLUs in
  between instead of the 1x1 map, then the same upsample-and-sum.
- `light` — paper 000's light decoder: one CBlock per resolution (50 % dropout, 3x3
  conv, batch norm) on that resolution's activations, an RBlock (residual block of two
  3x3 convs) after each; coarse to fine, the running map is upsampled x2 and added to
  the next CBlock's output; 32 channels throughout; a 1x1 conv to the classes.
- `klish` / `kmeans` — written by `genbackbones cluster`: a linear classifier on the
  normalised, upsampled, concatenated per-pixel features (paper 002). KLiSH's are the
  one-vs-rest SVMs at the chosen merge level; k-means' are the (unit) centroids, so the
  argmax is the nearest centroid in cosine distance.

Inputs are standardised per channel with statistics fitted on the training
activations (`fit_input_stats`), stored with the weights: a random or badly scaled
generator (activations of +-20) then trains with the same learning rate as a good one.
For `linear` this is still an affine map of the activations.

On disk an extractor is a folder: `extractor.json` (kind, layers and their shapes,
classes, the generator's weight fingerprint, sampling, training record) and
`extractor.safetensors` (weights and input statistics), written atomically.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import atomic
from ..errors import UserError, first_line
from .activations import upsample

FORMAT = "genbackbones.extractor/1"
CONFIG_FILE = "extractor.json"
WEIGHTS_FILE = "extractor.safetensors"
TRAINABLE_KINDS = ("linear", "nonlinear", "light")
CLUSTER_KINDS = ("klish", "kmeans")
KINDS = TRAINABLE_KINDS + CLUSTER_KINDS


@dataclass
class ExtractorConfig:
    """Everything needed to rebuild an extractor and to check it fits a generator."""

    kind: str
    layers: list[str]
    channels: list[int]
    resolutions: list[int]
    classes: list[str]
    out_resolution: int
    generator: dict = field(default_factory=dict)  # fingerprint, source, resolution
    sampling: dict = field(default_factory=dict)  # how the training images were generated
    hidden: int = 32  # nonlinear / light width (paper 000: 32)
    dropout: float = 0.5  # light decoder CBlocks (paper 000: 50 %)
    training: dict = field(default_factory=dict)  # curve, settings, scores: a record, not used to build

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def shapes(self) -> dict[str, tuple[int, int]]:
        return {n: (c, r) for n, c, r in zip(self.layers, self.channels, self.resolutions)}


def make_config(kind: str, shapes: dict[str, tuple[int, int]], classes, out_resolution: int,
                **extra) -> ExtractorConfig:
    """A config for `kind` over layers with `shapes` (layer -> (channels, resolution))."""
    if kind not in KINDS:
        raise UserError(f"unknown extractor {kind!r}; choose one of {', '.join(TRAINABLE_KINDS)}")
    if not shapes:
        raise UserError("an extractor needs at least one layer")
    if len(classes) < 2:
        raise UserError(f"an extractor needs at least 2 classes, got {len(classes)}")
    layers = list(shapes)
    return ExtractorConfig(kind, layers, [shapes[n][0] for n in layers], [shapes[n][1] for n in layers],
                           [str(c) for c in classes], int(out_resolution), **extra)


# ----------------------------------------------------------------------------- the common base


class Extractor(nn.Module):
    """Base class: input standardisation, the acts -> logits contract, predict."""

    def __init__(self, config: ExtractorConfig):
        super().__init__()
        self.config = config
        for i, c in enumerate(config.channels):
            self.register_buffer(f"in_mean_{i}", torch.zeros(c))
            self.register_buffer(f"in_std_{i}", torch.ones(c))

    @torch.no_grad()
    def fit_input_stats(self, acts: dict[str, torch.Tensor]) -> None:
        """Per-channel mean / std of each layer over the given (training) activations."""
        for i, name in enumerate(self.config.layers):
            x = acts[name].transpose(0, 1).reshape(self.config.channels[i], -1).double()
            getattr(self, f"in_mean_{i}").copy_(x.mean(1).float())
            getattr(self, f"in_std_{i}").copy_(x.std(1, unbiased=False).clamp(min=1e-6).float())

    def standardised(self, acts: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, name in enumerate(self.config.layers):
            if name not in acts:
                raise UserError(f"the activations have no layer {name!r}, which this extractor reads")
            x = acts[name].to(getattr(self, f"in_mean_{i}").device, torch.float32)
            mean = getattr(self, f"in_mean_{i}").view(1, -1, 1, 1)
            std = getattr(self, f"in_std_{i}").view(1, -1, 1, 1)
            out.append((x - mean) / std)
        return out

    def forward(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class index per pixel, int64 [N, H, W] (eval mode: no dropout, running batch norm)."""
        was_training = self.training
        self.eval()
        try:
            return self(acts).argmax(1)
        finally:
            self.train(was_training)


class LinearExtractor(Extractor):
    """Paper 004's LSE: sum over layers of upsample(T_i x_i), T_i a 1x1 map."""

    def __init__(self, config: ExtractorConfig):
        super().__init__(config)
        self.maps = nn.ModuleList(nn.Conv2d(c, config.num_classes, 1) for c in config.channels)

    def forward(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        size = self.config.out_resolution
        return sum(upsample(m(x), size) for m, x in zip(self.maps, self.standardised(acts)))


class NonlinearExtractor(Extractor):
    """Paper 004's NSE-1: per layer conv3x3-ReLU-conv3x3-ReLU-conv3x3, upsampled and summed."""

    def __init__(self, config: ExtractorConfig):
        super().__init__(config)
        h, k = config.hidden, config.num_classes
        self.maps = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, h, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(h, h, 3, padding=1),
                          nn.ReLU(inplace=True), nn.Conv2d(h, k, 3, padding=1))
            for c in config.channels)

    def forward(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        size = self.config.out_resolution
        return sum(upsample(m(x), size) for m, x in zip(self.maps, self.standardised(acts)))


class CBlock(nn.Sequential):
    """Paper 000: 50 % dropout, a convolution, batch norm (one per generator block)."""

    def __init__(self, in_channels: int, channels: int, dropout: float):
        super().__init__(nn.Dropout(dropout), nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(channels))


class RBlock(nn.Module):
    """Paper 000: one residual block with two convolutions."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                                  nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class LightDecoder(Extractor):
    """Paper 000's light decoder: CBlock per resolution, RBlocks, coarse to fine, 32 channels."""

    def __init__(self, config: ExtractorConfig):
        super().__init__(config)
        self.levels = sorted(set(config.resolutions))
        width = config.hidden
        self.cblocks = nn.ModuleList(CBlock(self._level_channels(r), width, config.dropout) for r in self.levels)
        self.rblocks = nn.ModuleList(RBlock(width) for _ in self.levels)
        self.head = nn.Conv2d(width, config.num_classes, 1)

    def _level_channels(self, resolution: int) -> int:
        return sum(c for c, r in zip(self.config.channels, self.config.resolutions) if r == resolution)

    def forward(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        xs = self.standardised(acts)
        h = None
        for level, cblock, rblock in zip(self.levels, self.cblocks, self.rblocks):
            x = torch.cat([x for x, r in zip(xs, self.config.resolutions) if r == level], 1)
            y = cblock(x)
            h = y if h is None else upsample(h, level) + y
            h = rblock(h)
        return upsample(self.head(h), self.config.out_resolution)


class ClusterExtractor(Extractor):
    """A linear classifier on normalised concatenated features (KLiSH's SVMs or k-means' centroids).

    Features (`features`): each layer standardised per channel and divided by
    sqrt(channels) so every layer weighs the same, upsampled, concatenated, and scaled
    to unit length per pixel (the cosine geometry the clustering used).
    """

    def __init__(self, config: ExtractorConfig):
        super().__init__(config)
        dim = sum(config.channels)
        self.weight = nn.Parameter(torch.zeros(config.num_classes, dim))
        self.bias = nn.Parameter(torch.zeros(config.num_classes))

    def features(self, acts: dict[str, torch.Tensor], size: int | None = None) -> torch.Tensor:
        """Unit-length per-pixel feature vectors [N, D, size, size]."""
        size = size or self.config.out_resolution
        parts = [upsample(x, size) / math.sqrt(x.shape[1]) for x in self.standardised(acts)]
        return F.normalize(torch.cat(parts, 1), dim=1)

    def forward(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.features(acts)
        return torch.einsum("ndhw,kd->nkhw", x, self.weight) + self.bias.view(1, -1, 1, 1)


CLASSES = {"linear": LinearExtractor, "nonlinear": NonlinearExtractor, "light": LightDecoder,
           "klish": ClusterExtractor, "kmeans": ClusterExtractor}


def build_extractor(config: ExtractorConfig) -> Extractor:
    if config.kind not in CLASSES:
        raise UserError(f"unknown extractor {config.kind!r}; choose one of {', '.join(TRAINABLE_KINDS)}")
    return CLASSES[config.kind](config)


# ----------------------------------------------------------------------------- disk format


def save_extractor(extractor: Extractor, path: str | Path, overwrite: bool = False) -> Path:
    """Write `extractor.json` + `extractor.safetensors` into folder `path`; all or nothing."""
    from safetensors.torch import save

    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; choose another --out or pass --overwrite")
    if path.exists() and not (path / CONFIG_FILE).exists():
        raise UserError(f"{path} exists and is not an extractor folder; refusing to replace it")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in extractor.state_dict().items()}
    record = {"format": FORMAT, **asdict(extractor.config)}
    with atomic.directory(path, overwrite=overwrite) as tmp:
        (tmp / WEIGHTS_FILE).write_bytes(save(tensors, metadata={"format": "pt"}))
        (tmp / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return path


def load_extractor(path: str | Path) -> Extractor:
    """Rebuild a saved extractor; a UserError says what is missing or wrong."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise UserError(f"{path} is not an extractor folder (needs {CONFIG_FILE} and {WEIGHTS_FILE}); train one "
                        "with `genbackbones annotate` or `genbackbones cluster`")
    try:
        record = json.loads((path / CONFIG_FILE).read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path / CONFIG_FILE} is not valid JSON ({err})") from None
    if record.pop("format", None) != FORMAT:
        raise UserError(f"{path / CONFIG_FILE} is not a {FORMAT} file")
    if record.get("kind") not in KINDS:
        raise UserError(f"{path}: unknown extractor kind {record.get('kind')!r}; known: {', '.join(KINDS)}")
    known = set(ExtractorConfig.__dataclass_fields__)
    extractor = build_extractor(ExtractorConfig(**{k: v for k, v in record.items() if k in known}))
    try:
        extractor.load_state_dict(load_file(path / WEIGHTS_FILE))
    except RuntimeError as err:
        raise UserError(f"{path / WEIGHTS_FILE} does not match {CONFIG_FILE} ({first_line(err)})") from None
    return extractor.eval()


def check_compatible(extractor: Extractor, G, fingerprint: str, where: str = "the extractor") -> None:
    """Refuse an extractor trained for another generator or other layers (its masks would be noise)."""
    cfg = extractor.config
    specs = G.tap_specs()
    fix = "train one for this generator with `genbackbones annotate` or `genbackbones cluster`"
    for name, (channels, resolution) in cfg.shapes().items():
        spec = specs.get(name)
        if spec is None or (spec.channels, spec.aligned_resolution) != (channels, resolution):
            have = "has no such layer" if spec is None else \
                f"has {spec.channels} channels at {spec.aligned_resolution}px there"
            raise UserError(f"{where} reads layer {name} ({channels} channels, {resolution}px) but this generator "
                            f"{have}: it was trained for another generator; {fix}")
    if cfg.out_resolution != G.img_resolution:
        raise UserError(f"{where} makes {cfg.out_resolution}px masks but this generator makes "
                        f"{G.img_resolution}px images; {fix}")
    trained_for = cfg.generator.get("fingerprint")
    if trained_for and trained_for != fingerprint:
        raise UserError(f"{where} was trained for another generator (weights fingerprint {trained_for[:12]}, this "
                        f"one is {fingerprint[:12]}); {fix}")
