"""The evaluation protocols: segmentation, landmarks, classification.

Each protocol takes one backbone, one labelled training subset and the test set,
and returns the test metrics. The same function runs for every backbone, label count
and seed, which is what makes the comparison fair. Settings are dataclasses with
defaults sized for CPUs at 64 px; every field can be overridden (`--set key=value`)
and is recorded in the results.

Fine-tuning (segmentation, heatmap landmarks, classification with `protocol=finetune`):
the whole backbone is trained with a light head, AdamW with two learning rates (head /
backbone), linear warm-up then cosine decay. The number of steps is scaled to the
number of labels N: `clamp(epochs * N / batch, min_steps, max_steps)`, so 4 labels
still get `min_steps` updates and large N are capped. Augmentation is a horizontal
flip; flipping swaps left/right classes or landmarks (`Schema.mirror`: by name,
`left_eye` <-> `right_eye`, or by a numbered layout's pairs), and is turned off where the
loader could not tell left from right (`Schema.mirror_known`); each run records `flip`.

Heads:
- segmentation: every feature level resized to stride 4, concatenated,
  conv3x3-BN-ReLU, 1x1 to the classes; logits upsampled to the image; cross-entropy.
- landmarks (heatmap): the same stride-4 fusion (the highest-resolution representation
  the backbone offers, as in HRNet's landmark heads) with one map per landmark;
  soft-argmax gives sub-pixel coordinates, trained with an L1 loss.
- landmarks (ridge, GH-Feat Table 6): frozen backbone, every level average-pooled to a
  `ridge_grid` x `ridge_grid` grid and concatenated, ridge regression to the coordinates.
- classification (linear): frozen backbone, global average of every level,
  concatenated, a linear classifier (ridge regression to one-hot targets, argmax).
  Ridge regularisation is chosen by exact leave-one-out on the training labels only.
- classification (knn): the same frozen pooled features, a weighted k-nearest-neighbour
  vote on cosine similarity (k=20, temperature 0.07), the protocol of InstDisc (Wu et al.
  2018) that DINO, lightly and solo-learn report: nothing is trained, so it measures the
  feature space itself.
- landmarks, reference: the mean shape of the N training labels predicted for every test
  image (`mean_shape_nme`): a head that does not beat it has learnt nothing about the face.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError, kind_words
from .backbones import ResolvedBackbone
from .data import Labelled, Schema
from .metrics import IGNORE_INDEX, balanced_accuracy, confusion_matrix, nme, segmentation_scores, top1

# progress inside one cell: (done, total, unit) with unit "steps" (fine-tuning) or "images" (frozen features)
Progress = Callable[[int, int, str], None]


def _quiet(done: int, total: int, unit: str) -> None:
    pass


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


@dataclass
class FinetuneSettings:
    epochs: float = 50.0  # passes over the N labelled images, before the clamp below
    min_steps: int = 300
    max_steps: int = 2000
    batch_size: int = 8
    lr_head: float = 1e-3
    lr_backbone: float = 1e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    flip: bool = True
    decoder_channels: int = 64
    decoder_stride: int = 4  # the fused head's output stride
    eval_batch_size: int = 64


@dataclass
class SegmentationSettings(FinetuneSettings):
    pass


@dataclass
class LandmarkSettings(FinetuneSettings):
    heatmap: bool = True  # fine-tuned heatmap protocol
    ridge: bool = True  # frozen features + ridge regression (GH-Feat Table 6)
    ridge_grid: int = 4


@dataclass
class ClassificationSettings(FinetuneSettings):
    protocol: str = "linear"  # linear | knn (frozen backbone) | finetune
    pool_grid: int = 1  # linear / knn: average-pool every level to this grid
    knn_k: int = 20  # knn: neighbours that vote (all N labelled images when N < k)
    knn_temperature: float = 0.07  # knn: votes weigh exp(cosine / temperature)


PROTOCOLS = ("linear", "knn", "finetune")


SETTINGS = {"segmentation": SegmentationSettings, "landmarks": LandmarkSettings,
            "classification": ClassificationSettings}


@dataclass(frozen=True)
class MetricSpec:
    key: str
    label: str
    higher_is_better: bool
    model_index_type: str  # metric_type in the model card's model-index
    protocol: str = ""  # finetune | heatmap | ridge | linear | knn (metric_config in the model-index)


def metric_specs(task: str, settings) -> list[MetricSpec]:
    """The headline metrics of a task (tables, plots, model index), in order."""
    if task == "segmentation":
        return [MetricSpec("miou", "mIoU (%)", True, "mean_iou", "finetune"),
                MetricSpec("pixel_accuracy", "pixel accuracy (%)", True, "accuracy", "finetune")]
    if task == "landmarks":
        specs = []
        if settings.heatmap:
            specs.append(MetricSpec("nme_heatmap", "NME, heatmap fine-tuned (% IOD)", False, "nme", "heatmap"))
        if settings.ridge:
            specs.append(MetricSpec("nme_ridge", "NME, frozen + ridge (% IOD)", False, "nme", "ridge"))
        return specs
    how = {"linear": "linear probe", "knn": f"kNN (k={settings.knn_k}, cosine)", "finetune": "fine-tuned"}
    how = how[settings.protocol]
    return [MetricSpec("top1", f"top-1, {how} (%)", True, "accuracy", settings.protocol),
            MetricSpec("balanced_accuracy", f"balanced accuracy, {how} (%)", True, "balanced_accuracy",
                       settings.protocol)]


def make_settings(task: str, overrides: list[str] = (), epochs: float | None = None, protocol: str | None = None):
    """Defaults of `task`, then --epochs / --linear|--finetune, then `key=value` overrides (typed)."""
    settings = SETTINGS[task]()
    if epochs is not None:
        settings = replace(settings, epochs=float(epochs))
    if protocol is not None:
        if task != "classification":
            raise UserError("--linear/--finetune apply to --task classification only")
        settings = replace(settings, protocol=protocol)
    types = {f.name: type(getattr(settings, f.name)) for f in fields(settings)}
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in types:
            raise UserError(f"--set {item!r}: unknown {task} setting; valid keys: {', '.join(types)}")
        settings = replace(settings, **{key: _parse(value.strip(), types[key], key)})
    _validate(task, settings)
    return settings


def _parse(value: str, kind: type, key: str):
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        return kind(value)
    except ValueError:
        raise UserError(f"--set {key}={value}: expected {kind_words(kind)}") from None


def _validate(task: str, s) -> None:
    """Refuse values that cannot be right, before anything is loaded or written."""
    if s.batch_size < 1 or s.min_steps < 1 or s.max_steps < s.min_steps or s.epochs <= 0:
        raise UserError("settings need batch_size >= 1, epochs > 0 and 1 <= min_steps <= max_steps")
    positive = {"lr_head": s.lr_head, "lr_backbone": s.lr_backbone, "decoder_channels": s.decoder_channels,
                "decoder_stride": s.decoder_stride, "eval_batch_size": s.eval_batch_size}
    if task == "landmarks":
        positive["ridge_grid"] = s.ridge_grid
    if task == "classification":
        positive.update(pool_grid=s.pool_grid, knn_k=s.knn_k, knn_temperature=s.knn_temperature)
    for key, value in positive.items():
        if not value > 0:
            raise UserError(f"--set {key}={value}: must be greater than 0")
    if s.weight_decay < 0 or s.warmup_steps < 0:
        raise UserError("weight_decay and warmup_steps must not be negative")
    if task == "classification" and s.protocol not in PROTOCOLS:
        raise UserError(f"classification protocol must be one of {', '.join(PROTOCOLS)}, got {s.protocol!r}")
    if task == "landmarks" and not (s.heatmap or s.ridge):
        raise UserError("landmarks: enable at least one of heatmap / ridge")


def finetune_steps(n: int, s: FinetuneSettings) -> int:
    """Enough updates for tiny N (min_steps), proportional to N in between, capped for large N."""
    return int(min(s.max_steps, max(s.min_steps, math.ceil(s.epochs * n / min(s.batch_size, n)))))


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def run_protocol(task: str, backbone: ResolvedBackbone, train: Labelled, test: Labelled, schema: Schema,
                 settings, seed: int, device: torch.device, cache: FeatureCache,
                 progress: Progress | None = None) -> dict:
    """Train on `train` (N labelled images) with `seed`, score on `test`: {"metrics", "steps", "seconds"}.

    `progress` hears the fine-tuning steps and the images encoded for frozen features
    as they happen (what the evaluator shows inside a cell); it does not change a number."""
    t0 = time.perf_counter()
    progress = progress or _quiet
    if task == "segmentation":
        out = _segmentation(backbone, train, test, schema, settings, seed, device, progress)
    elif task == "landmarks":
        out = _landmarks(backbone, train, test, schema, settings, seed, device, cache, progress)
    elif settings.protocol == "linear":
        out = _linear_classification(backbone, train, test, settings, seed, device, cache, progress)
    elif settings.protocol == "knn":
        out = _knn_classification(backbone, train, test, settings, seed, device, cache, progress)
    else:
        out = _finetune_classification(backbone, train, test, schema, settings, seed, device, progress)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


class Normalize(nn.Module):
    """uint8 images -> the backbone's own normalisation (its pretrained_cfg mean/std of [0, 1] images)."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() / 255.0 - self.mean) / self.std


class FusedDecoder(nn.Module):
    """Every level resized to stride 4, concatenated, conv3x3-BN-ReLU, 1x1 to `out_channels`."""

    def __init__(self, channels: list[int], hidden: int, out_channels: int):
        super().__init__()
        self.fuse = nn.Sequential(nn.Conv2d(sum(channels), hidden, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
        self.out = nn.Conv2d(hidden, out_channels, 1)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        x = torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in features], 1)
        return self.out(self.fuse(x))


class DenseModel(nn.Module):
    """Backbone + fused head: logits [B, out, ceil(R/stride), ceil(R/stride)]."""

    def __init__(self, backbone: nn.Module, mean, std, out_channels: int, hidden: int, stride: int = 4):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.backbone = backbone
        self.stride = stride
        self.head = FusedDecoder(backbone.feature_info.channels(), hidden, out_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = (math.ceil(images.shape[-2] / self.stride), math.ceil(images.shape[-1] / self.stride))
        return self.head(self.backbone(self.normalize(images)), size)


class PooledClassifier(nn.Module):
    """Backbone + global average of every level, concatenated, + a linear layer (fine-tuned classification)."""

    def __init__(self, backbone: nn.Module, mean, std, num_classes: int):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.backbone = backbone
        self.head = nn.Linear(sum(backbone.feature_info.channels()), num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(self.normalize(images))
        return self.head(torch.cat([f.mean(dim=(2, 3)) for f in feats], 1))


def soft_argmax(logits: torch.Tensor, resolution: int) -> torch.Tensor:
    """Heatmap logits [B, K, h, w] -> expected (x, y) in image pixels (pixel centres at integers)."""
    b, k, h, w = logits.shape
    prob = logits.flatten(2).softmax(-1).view(b, k, h, w)
    xs = (torch.arange(w, device=logits.device, dtype=prob.dtype) + 0.5) * (resolution / w) - 0.5
    ys = (torch.arange(h, device=logits.device, dtype=prob.dtype) + 0.5) * (resolution / h) - 0.5
    return torch.stack([(prob.sum(2) * xs).sum(-1), (prob.sum(3) * ys).sum(-1)], dim=-1)


# ---------------------------------------------------------------------------
# Fine-tuning loop
# ---------------------------------------------------------------------------


class Batches:
    """Seeded epochs over N training images, with per-sample flips that also flip the labels."""

    def __init__(self, data: Labelled, schema: Schema, settings: FinetuneSettings, seed: int,
                 device: torch.device, flip: bool):
        self.data, self.device, self.flip = data, device, flip
        self.batch = min(settings.batch_size, len(data))
        self.generator = torch.Generator().manual_seed(seed)
        self.mirror = torch.tensor(schema.mirror or (0,), dtype=torch.long)
        self.resolution = schema.resolution
        self.order: list[int] = []

    def next(self) -> Labelled:
        if len(self.order) < self.batch:
            self.order += torch.randperm(len(self.data), generator=self.generator).tolist()
        positions, self.order = self.order[:self.batch], self.order[self.batch:]
        batch = self.data.take(positions)
        if self.flip:
            batch = self._flip(batch, torch.rand(len(positions), generator=self.generator) < 0.5)
        return batch

    def _flip(self, b: Labelled, which: torch.Tensor) -> Labelled:
        if not which.any():
            return b
        b.images[which] = b.images[which].flip(-1)
        if b.masks is not None:
            flipped = b.masks[which].flip(-1)
            keep = flipped == IGNORE_INDEX
            b.masks[which] = torch.where(keep, flipped, self.mirror[flipped.clamp(max=len(self.mirror) - 1)])
        if b.landmarks is not None:
            pts = b.landmarks[which][:, self.mirror]
            pts[..., 0] = self.resolution - 1 - pts[..., 0]
            b.landmarks[which] = pts
        if b.labels is not None:
            b.labels[which] = self.mirror[b.labels[which]]
        return b


def _optimizer(model: nn.Module, s: FinetuneSettings, steps: int):
    head = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    groups = [{"params": list(model.backbone.parameters()), "lr": s.lr_backbone}, {"params": head, "lr": s.lr_head}]
    opt = torch.optim.AdamW(groups, weight_decay=s.weight_decay)
    warm = max(1, min(s.warmup_steps, steps // 4))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _finetune(model: nn.Module, batches: Batches, loss_fn, steps: int, s: FinetuneSettings,
              progress: Progress = _quiet) -> float:
    """Train `steps` updates; returns the mean loss of the last 10% (a sanity number for the results)."""
    opt, sched = _optimizer(model, s, steps)
    model.train()
    tail = []
    for step in range(steps):
        batch = batches.next()
        loss = loss_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step >= steps - max(1, steps // 10):
            tail.append(loss.item())
        progress(step + 1, steps, "steps")
    model.eval()
    return sum(tail) / len(tail)


@torch.no_grad()
def _predict(model: nn.Module, images: torch.Tensor, batch: int, device: torch.device):
    model.eval()
    for i in range(0, len(images), batch):
        yield i, model(images[i:i + batch].to(device))


# ---------------------------------------------------------------------------
# Segmentation
# ---------------------------------------------------------------------------


def _segmentation(backbone, train, test, schema, s: SegmentationSettings, seed, device, progress) -> dict:
    torch.manual_seed(seed)
    model = DenseModel(backbone.build(seed), backbone.mean, backbone.std, len(schema.classes),
                       s.decoder_channels, s.decoder_stride).to(device)
    res = schema.resolution

    def loss_fn(m, b):
        logits = F.interpolate(m(b.images.to(device)), size=(res, res), mode="bilinear", align_corners=False)
        return F.cross_entropy(logits, b.masks.to(device), ignore_index=IGNORE_INDEX)

    steps = finetune_steps(len(train), s)
    flip = s.flip and schema.mirror_known
    final_loss = _finetune(model, Batches(train, schema, s, seed, device, flip), loss_fn, steps, s, progress)
    cm = torch.zeros(len(schema.classes), len(schema.classes), dtype=torch.long)
    for i, logits in _predict(model, test.images, s.eval_batch_size, device):
        pred = F.interpolate(logits, size=(res, res), mode="bilinear", align_corners=False).argmax(1)
        cm += confusion_matrix(pred.cpu(), test.masks[i:i + len(pred)], len(schema.classes))
    return {"metrics": segmentation_scores(cm, schema.classes), "steps": steps, "final_train_loss": final_loss,
            "flip": flip}


# ---------------------------------------------------------------------------
# Landmarks
# ---------------------------------------------------------------------------


def _landmarks(backbone, train, test, schema, s: LandmarkSettings, seed, device, cache, progress) -> dict:
    metrics, out = {}, {}
    if s.heatmap:
        metrics["nme_heatmap"], out["steps"], out["final_train_loss"] = _heatmap(backbone, train, test, schema, s,
                                                                               seed, device, progress)
        out["flip"] = s.flip and schema.mirror_known
    if s.ridge:
        train_x, blocks = cache.features(backbone, seed, train, s.ridge_grid, device, progress)
        test_x, _ = cache.features(backbone, seed, test, s.ridge_grid, device, progress)
        targets = train.landmarks.reshape(len(train), -1).double() / schema.resolution
        fit = RidgeFit(train_x, targets, blocks)
        pred = fit.predict(test_x).view(len(test), -1, 2) * schema.resolution
        metrics["nme_ridge"] = nme(pred, test.landmarks, schema.eye_indices)
        out["ridge_alpha"] = fit.alpha
    return {"metrics": metrics, **out}


def _heatmap(backbone, train, test, schema, s: LandmarkSettings, seed, device,
             progress: Progress = _quiet) -> tuple[float, int, float]:
    torch.manual_seed(seed)
    k, res = len(schema.landmark_names), schema.resolution
    model = DenseModel(backbone.build(seed), backbone.mean, backbone.std, k, s.decoder_channels,
                       s.decoder_stride).to(device)

    def loss_fn(m, b):
        return (soft_argmax(m(b.images.to(device)), res) - b.landmarks.to(device)).abs().mean() / res

    steps = finetune_steps(len(train), s)
    flip = s.flip and schema.mirror_known
    final_loss = _finetune(model, Batches(train, schema, s, seed, device, flip), loss_fn, steps, s, progress)
    preds = torch.cat([soft_argmax(logits, res).cpu() for _, logits in
                       _predict(model, test.images, s.eval_batch_size, device)])
    return nme(preds, test.landmarks, schema.eye_indices), steps, final_loss


# ---------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------


def _linear_classification(backbone, train, test, s: ClassificationSettings, seed, device, cache,
                           progress) -> dict:
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    train_x, blocks = cache.features(backbone, seed, train, s.pool_grid, device, progress)
    test_x, _ = cache.features(backbone, seed, test, s.pool_grid, device, progress)
    fit = RidgeFit(train_x, F.one_hot(train.labels, num_classes).double(), blocks)
    pred = fit.predict(test_x).argmax(1)
    return {"metrics": {"top1": top1(pred, test.labels), "balanced_accuracy": balanced_accuracy(pred, test.labels)},
            "ridge_alpha": fit.alpha, "classes_in_train": int(train.labels.unique().numel())}


def _finetune_classification(backbone, train, test, schema, s: ClassificationSettings, seed, device,
                             progress) -> dict:
    torch.manual_seed(seed)
    model = PooledClassifier(backbone.build(seed), backbone.mean, backbone.std, len(schema.classes)).to(device)

    def loss_fn(m, b):
        return F.cross_entropy(m(b.images.to(device)), b.labels.to(device))

    steps = finetune_steps(len(train), s)
    flip = s.flip and schema.mirror_known
    final_loss = _finetune(model, Batches(train, schema, s, seed, device, flip), loss_fn, steps, s, progress)
    pred = torch.cat([logits.argmax(1).cpu() for _, logits in _predict(model, test.images, s.eval_batch_size, device)])
    return {"metrics": {"top1": top1(pred, test.labels), "balanced_accuracy": balanced_accuracy(pred, test.labels)},
            "steps": steps, "final_train_loss": final_loss, "flip": flip}


def _knn_classification(backbone, train, test, s: ClassificationSettings, seed, device, cache, progress) -> dict:
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    train_x, blocks = cache.features(backbone, seed, train, s.pool_grid, device, progress)
    test_x, _ = cache.features(backbone, seed, test, s.pool_grid, device, progress)
    pred = knn_predict(train_x, train.labels, test_x, num_classes, s.knn_k, s.knn_temperature, blocks)
    return {"metrics": {"top1": top1(pred, test.labels), "balanced_accuracy": balanced_accuracy(pred, test.labels)},
            "k": min(s.knn_k, len(train)), "classes_in_train": int(train.labels.unique().numel())}


def knn_predict(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07, blocks: list[int] | None = None,
                chunk: int = 1024) -> torch.Tensor:
    """Weighted kNN vote on cosine similarity (InstDisc / DINO's evaluation): class indices [M].

    Each of the k most similar training images votes for its class with weight
    exp(cos / temperature). Features made of several levels (`blocks`, column counts) are
    L2-normalised per level first, so every level weighs the same in the cosine, as in the
    ridge probe; written out here because it is a dozen lines of matrix algebra on cached
    features, where a library kNN would not weight votes this way.
    """
    train_z, test_z = _unit_blocks(train_x, blocks), _unit_blocks(test_x, blocks)
    k = min(k, len(train_z))
    out = []
    for i in range(0, len(test_z), chunk):
        sim = test_z[i:i + chunk] @ train_z.T
        top, idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes, dtype=torch.float64)
        weights = ((top - top[:, :1]) / temperature).exp()  # the common factor exp(max / T) cannot overflow
        votes.scatter_add_(1, train_y[idx], weights)
        out.append(votes.argmax(1))
    return torch.cat(out)


def _unit_blocks(x: torch.Tensor, blocks: list[int] | None) -> torch.Tensor:
    x = x.double()
    parts = torch.split(x, blocks, dim=1) if blocks else (x,)
    x = torch.cat([F.normalize(p, dim=1) for p in parts], 1)
    return F.normalize(x, dim=1)


def mean_shape_nme(train: Labelled, test: Labelled, schema: Schema) -> float:
    """NME of predicting the training labels' mean shape for every test image: the floor to beat."""
    mean = train.landmarks.double().mean(0, keepdim=True).expand(len(test), -1, -1)
    return nme(mean, test.landmarks, schema.eye_indices)


# ---------------------------------------------------------------------------
# Frozen features and ridge regression
# ---------------------------------------------------------------------------


class FeatureCache:
    """Pooled frozen features per image name, so the test set is encoded once per backbone (and init seed)."""

    def __init__(self, batch_size: int = 64):
        self.batch_size = batch_size
        self.store: dict[tuple, torch.Tensor] = {}
        self.models: dict[tuple, nn.Module] = {}

    def features(self, backbone: ResolvedBackbone, seed: int, data: Labelled, grid: int,
                 device: torch.device, progress: Progress = _quiet) -> tuple[torch.Tensor, list[int]]:
        """(float32 [N, D] features, sizes of the per-level blocks that make up D)."""
        init = seed if backbone.load is None else None  # a random init differs per seed
        key = (backbone.name, init, grid)
        model = self._model(backbone, init, seed, device)
        missing = [i for i, n in enumerate(data.names) if key + (n,) not in self.store]
        if missing:
            feats = pooled_features(model, data.images[missing], grid, self.batch_size, device, progress)
            for i, f in zip(missing, feats):
                self.store[key + (data.names[i],)] = f
        blocks = [c * grid * grid for c in model[1].feature_info.channels()]
        return torch.stack([self.store[key + (n,)] for n in data.names]), blocks

    def _model(self, backbone, init, seed, device) -> nn.Module:
        key = (backbone.name, init)
        if key not in self.models:
            self.models.clear()  # one frozen model in memory at a time
            model = nn.Sequential(Normalize(backbone.mean, backbone.std), backbone.build(seed))
            self.models[key] = model.to(device).eval()
        return self.models[key]


@torch.no_grad()
def pooled_features(model: nn.Module, images: torch.Tensor, grid: int, batch: int,
                    device: torch.device, progress: Progress = _quiet) -> torch.Tensor:
    """Every feature level average-pooled to grid x grid, flattened and concatenated: float32 [N, D]."""
    out = []
    for i in range(0, len(images), batch):
        feats = model(images[i:i + batch].to(device))
        out.append(torch.cat([F.adaptive_avg_pool2d(f, grid).flatten(1) for f in feats], 1).float().cpu())
        progress(min(i + batch, len(images)), len(images), "images")
    return torch.cat(out)


class RidgeFit:
    """Ridge regression on frozen features, alpha chosen by exact leave-one-out error.

    Features are centred, and each feature level (a block of columns) is divided by one
    number, its RMS deviation on the training images, so every level weighs the same
    in the kernel. Per-column standardisation is avoided on purpose: with 4 labels a
    column that barely varies on the training images would be blown up and make the
    test predictions explode.

    Solved in the dual (N x N kernel), which is cheap because N (labels) is small and
    the feature dimension is large. With the eigendecomposition K = U S U^T, the hat
    matrix for alpha is H = U diag(S / (S + alpha)) U^T (+ 1/N for the intercept), and the
    leave-one-out residual of sample i is (y_i - yhat_i) / (1 - H_ii): every alpha on the
    grid is scored without refitting and without looking at the test set.
    """

    GRID = torch.logspace(-3, 3, 13, dtype=torch.float64)

    def __init__(self, x: torch.Tensor, y: torch.Tensor, blocks: list[int] | None = None):
        x, y = x.double(), y.double()
        n = x.shape[0]
        self.x_mean, self.y_mean = x.mean(0), y.mean(0)
        self.x_scale = _block_scale(x - self.x_mean, blocks or [x.shape[1]])
        z, yc = (x - self.x_mean) / self.x_scale, y - self.y_mean
        s, u = torch.linalg.eigh(z @ z.T)
        s = s.clamp_min(0)
        uty = u.T @ yc
        scale = float(s.mean()) if float(s.mean()) > 0 else 1.0
        alphas = self.GRID * scale
        if n >= 3:
            errors = [self._loo_error(u, s, uty, yc, a, n) for a in alphas]
            self.alpha = float(alphas[int(torch.tensor(errors).argmin())])
        else:
            self.alpha = scale  # too few labels to cross-validate
        self.weights = z.T @ (u @ (uty / (s + self.alpha)[:, None]))

    @staticmethod
    def _loo_error(u, s, uty, yc, alpha, n) -> float:
        shrink = s / (s + alpha)
        fitted = u @ (uty * shrink[:, None])
        hat = (u * u * shrink).sum(1) + 1.0 / n
        resid = (yc - fitted) / (1 - hat).clamp_min(1e-9)[:, None]
        return float((resid ** 2).mean())

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - self.x_mean) / self.x_scale) @ self.weights + self.y_mean


def _block_scale(xc: torch.Tensor, blocks: list[int]) -> torch.Tensor:
    """One scale per block of columns: the RMS of its centred training values (1 for a constant block)."""
    if sum(blocks) != xc.shape[1]:
        raise ValueError(f"feature blocks {blocks} do not add up to {xc.shape[1]} columns")
    scales = []
    for part in torch.split(xc, blocks, dim=1):
        rms = float(part.pow(2).mean().sqrt())
        scales.append(torch.full((part.shape[1],), rms if rms > 1e-12 else 1.0, dtype=xc.dtype))
    return torch.cat(scales)
