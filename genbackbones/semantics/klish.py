"""KLiSH (paper 002): unsupervised semantic clusters from a generator's features.

Why not plain k-means: a generator encodes semantics so that each class is *linearly
separable* from the rest, not so that it gathers round a centroid. KLiSH therefore
over-clusters with k-means and then merges clusters guided by linear separability:

1. Features: selected layers (paper 002: last conv of each resolution, finest first,
   up to ~1000 channels), each standardised per channel and weighted 1/sqrt(channels),
   upsampled bilinearly to one resolution, concatenated, unit length per pixel
   (`ClusterExtractor.features`). A seeded sample of pixels is clustered.
2. Spherical k-means (k-means++ seeding) with `init_k` clusters.
3. Filter: one-vs-rest linear SVMs (L2-regularised squared hinge, L-BFGS) are trained on
   the k-means labels; a cluster whose SVM IoU, in logit space, falls below mean - std
   spans several semantic parts (not separable) and is dropped; k-means is re-run from
   the remaining centroids.
4. Merge, one cluster at a time: train the SVMs (warm start), take the least separable
   cluster p (lowest SVM IoU) and merge it into the cluster q it is most confused with,
   by effective cosine similarity: cosine between the clusters' confidence maps
   (clamp(score, -1, 1) + 1) / 2 over all pixels. q keeps its id. Every level's SVMs are
   kept, so any K on the way is an extractor (`KlishResult.extractor(K)`).

The plain k-means baseline (`kmeans_extractor`) uses the same features and seeds.
`max_matching_miou` is paper 002's maximum-matching mIoU (each cluster mapped to at
most one ground-truth class, several clusters may map to one class; greedy).
"""

from __future__ import annotations

import colorsys
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import atomic
from ..errors import UserError
from ..evaluate.metrics import confusion_matrix
from .activations import Generated, Sampling, generate_all, generator_fingerprint, layer_shapes
from .extractors import ClusterExtractor, build_extractor, make_config, save_extractor


@dataclass
class KlishSettings:
    init_k: int = 50  # paper 002: 100 (50 for AFHQ); fewer for small generators
    resolution: int | None = None  # clustering resolution (default: the generator's, at most 64)
    max_pixels: int = 40_000  # pixels sampled for k-means and the SVMs
    kmeans_iters: int = 30
    svm_c: float = 10.0  # weight of the mean squared hinge against 0.5 * mean |w|^2
    svm_evals: int = 40  # L-BFGS iterations per (warm-started) SVM fit; 3x for the first
    filter: bool = True
    seed: int = 0


@dataclass
class MergeStep:
    k: int  # clusters before the merge
    absorbed: int  # id of the least separable cluster p
    into: int  # id of the cluster q it merged into (q keeps its id)
    iou: float  # p's SVM IoU
    ecos: float  # ECoS(p, q)
    mean_iou: float  # mean SVM IoU of the k clusters


@dataclass
class Level:
    weight: torch.Tensor  # [K, D]
    bias: torch.Tensor  # [K]
    ids: list[int]  # cluster id of each class index
    mean_iou: float
    agreement: float = float("nan")  # fraction of sampled pixels where the SVMs' argmax is the merged cluster


@dataclass
class KlishResult:
    template: ClusterExtractor  # layers + input statistics; weights unset
    initial_k: int
    kept_k: int
    merges: list[MergeStep] = field(default_factory=list)
    levels: dict[int, Level] = field(default_factory=dict)

    def extractor(self, k: int, kind: str = "klish") -> ClusterExtractor:
        """The SVMs of merge level `k` as an extractor (classes named cluster_<id>)."""
        if k not in self.levels:
            raise UserError(f"no merge level with K={k}; KLiSH produced K={min(self.levels)}..{max(self.levels)} "
                            "(raise --init-k for a larger K)")
        return with_weights(self.template, self.levels[k], kind)


def with_weights(template: ClusterExtractor, level: Level, kind: str) -> ClusterExtractor:
    cfg = template.config
    config = make_config(kind, cfg.shapes(), [f"cluster_{i}" for i in level.ids], cfg.out_resolution,
                         generator=dict(cfg.generator), sampling=dict(cfg.sampling))
    extractor = build_extractor(config)
    state = {k: v for k, v in template.state_dict().items() if k.startswith("in_")}
    extractor.load_state_dict({**state, "weight": level.weight.clone(), "bias": level.bias.clone()})
    return extractor.eval()


# ----------------------------------------------------------------------------- features


def feature_template(G, layers: list[str], generated: Generated, sampling: Sampling,
                     fingerprint: str | None = None, source: str | None = None) -> ClusterExtractor:
    """A ClusterExtractor holding the layers and the input statistics of `generated`."""
    generator = {"fingerprint": fingerprint or generator_fingerprint(G), "source": source,
                 "resolution": G.img_resolution}
    config = make_config("klish", layer_shapes(G, layers), ["a", "b"], G.img_resolution, generator=generator,
                         sampling=sampling.as_dict())
    template = build_extractor(config)
    template.fit_input_stats(generated.acts)
    return template


@torch.no_grad()
def image_features(template: ClusterExtractor, acts: dict[str, torch.Tensor], resolution: int,
                   batch: int = 8) -> torch.Tensor:
    """[N, D, r, r] unit feature vectors of every pixel at `resolution`."""
    n = len(next(iter(acts.values())))
    return torch.cat([template.features({k: v[i:i + batch] for k, v in acts.items()}, resolution)
                      for i in range(0, n, batch)])


@torch.no_grad()
def sample_pixels(template: ClusterExtractor, acts: dict[str, torch.Tensor], resolution: int, max_pixels: int,
                  seed: int, batch: int = 8) -> torch.Tensor:
    """A seeded sample of at most `max_pixels` pixel features [P, D], equally many from every image."""
    n = len(next(iter(acts.values())))
    per_image = max(1, min(resolution * resolution, max_pixels // n))
    rng = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, batch):
        feats = template.features({k: v[i:i + batch] for k, v in acts.items()}, resolution)
        flat = feats.flatten(2).transpose(1, 2)  # [b, r*r, D]
        for f in flat:
            out.append(f[torch.randperm(f.shape[0], generator=rng)[:per_image]])
    return torch.cat(out)


# ----------------------------------------------------------------------------- k-means


def kmeans(x: torch.Tensor, k: int, iters: int, seed: int, init: torch.Tensor | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical k-means on unit vectors: (unit centroids [k, D], labels [P]); k-means++ seeding."""
    if k > len(x):
        raise UserError(f"cannot make {k} clusters from {len(x)} pixels; lower K or raise --n")
    rng = torch.Generator().manual_seed(seed)
    c = init.clone() if init is not None else _kmeanspp(x, k, rng)
    labels = None
    for _ in range(iters):
        sims = x @ c.T
        new = sims.argmax(1)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        c = _centroids(x, labels, k, sims)
    return c, (x @ c.T).argmax(1)


def _kmeanspp(x: torch.Tensor, k: int, rng: torch.Generator) -> torch.Tensor:
    first = int(torch.randint(len(x), (1,), generator=rng))
    chosen = [first]
    dist = (1 - x @ x[first]).clamp(min=0)
    for _ in range(k - 1):
        weights = dist.square()
        idx = int(torch.multinomial(weights, 1, generator=rng)) if weights.sum() > 0 else \
            int(torch.randint(len(x), (1,), generator=rng))
        chosen.append(idx)
        dist = torch.minimum(dist, (1 - x @ x[idx]).clamp(min=0))
    return x[chosen].clone()


def _centroids(x: torch.Tensor, labels: torch.Tensor, k: int, sims: torch.Tensor) -> torch.Tensor:
    sums = torch.zeros(k, x.shape[1]).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=k)
    empty = (counts == 0).nonzero().flatten()
    if len(empty):  # re-seed empty clusters at the worst-fitting pixels
        worst = sims.max(1).values.argsort()[:len(empty)]
        sums[empty] = x[worst]
    return F.normalize(sums, dim=1)


# ----------------------------------------------------------------------------- linear SVMs


def train_svm(x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, c: float,
              iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One-vs-rest linear SVMs, L2-regularised squared hinge (paper 002 Eq. 3), by L-BFGS."""
    k = weight.shape[0]
    y = -torch.ones(len(x), k)
    y[torch.arange(len(x)), labels] = 1
    w = weight.clone().requires_grad_(True)
    b = bias.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=iters, history_size=10, tolerance_change=1e-7,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        scores = x @ w.T + b
        loss = 0.5 * w.square().sum(1).mean() + c * (1 - y * scores).clamp(min=0).square().mean()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


@torch.no_grad()
def svm_metrics(x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster SVM IoU [K] (Eq. 4) and effective cosine similarity [K, K] (Eq. 5)."""
    scores = x @ weight.T + bias
    k = weight.shape[0]
    gt = F.one_hot(labels, k).bool()
    pred = scores > 0
    iou = (pred & gt).sum(0).double() / (pred | gt).sum(0).double().clamp(min=1)
    conf = (scores.clamp(-1, 1) + 1) / 2
    gram = (conf.T @ conf).double()
    norm = gram.diagonal().sqrt().clamp(min=1e-12)
    return iou.float(), (gram / (norm[:, None] * norm[None, :])).float()


def filter_clusters(x: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor, s: KlishSettings
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop clusters whose SVM IoU (logit) is below mean - std, then re-run k-means from the rest.

    `x` are the scaled features the SVMs see; k-means runs on their unit directions."""
    k = len(centroids)
    w, b = train_svm(x, labels, torch.zeros(k, x.shape[1]), torch.zeros(k), s.svm_c, 3 * s.svm_evals)
    iou, _ = svm_metrics(x, labels, w, b)
    logit = torch.logit(iou.double().clamp(1e-4, 1 - 1e-4))
    keep = logit >= logit.mean() - logit.std()
    if keep.sum() < 2 or keep.all():
        return centroids, labels
    return kmeans(F.normalize(x, dim=1), int(keep.sum()), s.kmeans_iters, s.seed, init=centroids[keep])


# ----------------------------------------------------------------------------- KLiSH


def klish(x: torch.Tensor, template: ClusterExtractor | None, s: KlishSettings, stop_k: int = 2,
          on_merge=None) -> KlishResult:
    """Run KLiSH on unit pixel features `x` [P, D] down to `stop_k` clusters, keeping every level.

    `template` (layers + input statistics) is only carried into the result so that
    `KlishResult.extractor(K)` can build extractors; None works for plain feature sets.
    A level's weights apply to unit features: scores = x @ weight.T + bias."""
    if s.init_k < max(stop_k, 2):
        raise UserError(f"--init-k {s.init_k} must be at least K={stop_k}")
    centroids, labels = kmeans(x, s.init_k, s.kmeans_iters, s.seed)
    scale = math.sqrt(x.shape[1])
    x = x * scale  # unit-variance coordinates: the SVM's C keeps its meaning for any feature width
    if s.filter:
        centroids, labels = filter_clusters(x, centroids, labels, s)
    k = len(centroids)
    result = KlishResult(template, s.init_k, k)
    ids = list(range(k))
    w, b = train_svm(x, labels, torch.zeros(k, x.shape[1]), torch.zeros(k), s.svm_c, 3 * s.svm_evals)
    while True:
        iou, ecos = svm_metrics(x, labels, w, b)
        agreement = float(((x @ w.T + b).argmax(1) == labels).float().mean())
        result.levels[k] = Level(w * scale, b.clone(), list(ids), float(iou.mean()), agreement)
        if k <= stop_k:
            return result
        p = int(iou.argmin())
        ecos[p, p] = -1
        q = int(ecos[p].argmax())
        result.merges.append(MergeStep(k, ids[p], ids[q], float(iou[p]), float(ecos[p, q]), float(iou.mean())))
        labels = torch.where(labels == p, q, labels)
        labels = labels - (labels > p).long()
        keep = [i for i in range(k) if i != p]
        w, b, ids, k = w[keep], b[keep], [ids[i] for i in keep], k - 1
        w, b = train_svm(x, labels, w, b, s.svm_c, s.svm_evals)
        if on_merge is not None:
            on_merge(k)


def kmeans_extractor(x: torch.Tensor, template: ClusterExtractor, k: int, s: KlishSettings) -> ClusterExtractor:
    """The plain k-means baseline at K: nearest unit centroid (cosine) on the same features."""
    centroids, _ = kmeans(x, k, s.kmeans_iters, s.seed)
    return with_weights(template, Level(centroids, torch.zeros(k), list(range(k)), float("nan")), "kmeans")


# ----------------------------------------------------------------------------- evaluation


def cluster_confusion(clusters: torch.Tensor, gt: torch.Tensor, num_classes: int, num_clusters: int,
                      ignore_index: int = 255) -> torch.Tensor:
    """int64 [num_classes, num_clusters] pixel counts (rows = ground truth)."""
    return confusion_matrix(clusters, gt, num_classes, ignore_index, num_pred=num_clusters)


def max_matching_miou(cm: torch.Tensor) -> tuple[float, list[int]]:
    """Paper 002's maximum-matching mIoU (percent) from a [classes, clusters] confusion matrix.

    Each cluster is assigned to at most one ground-truth class (-1: none); a class's
    prediction is the union of its clusters; the mean IoU runs over the classes present
    in the ground truth. Greedy: repeatedly apply the single (re)assignment that raises
    the mean IoU most, until none does.
    """
    cm = cm.double().numpy()
    num_classes, num_clusters = cm.shape
    gt_area, cl_area = cm.sum(1), cm.sum(0)
    present = np.flatnonzero(gt_area > 0)
    assign = np.full(num_clusters, -1)
    inter, pred = np.zeros(num_classes), np.zeros(num_classes)

    def mean_iou(inter_, pred_):
        union = gt_area[present] + pred_[present] - inter_[present]
        return float((inter_[present] / np.maximum(union, 1e-12)).mean())

    best = mean_iou(inter, pred)
    while True:
        choice = None
        for k in range(num_clusters):
            for c in [-1, *present.tolist()]:
                if c == assign[k]:
                    continue
                i2, p2 = _moved(inter, pred, cm, cl_area, k, assign[k], c)
                value = mean_iou(i2, p2)
                if value > best + 1e-12:
                    best, choice = value, (k, c, i2, p2)
        if choice is None:
            return best * 100, assign.tolist()
        k, c, inter, pred = choice
        assign[k] = c


def _moved(inter, pred, cm, cl_area, k, old, new):
    inter, pred = inter.copy(), pred.copy()
    if old >= 0:
        inter[old] -= cm[old, k]
        pred[old] -= cl_area[k]
    if new >= 0:
        inter[new] += cm[new, k]
        pred[new] += cl_area[k]
    return inter, pred


# ----------------------------------------------------------------------------- the merge-tree picture


def palette(n: int) -> np.ndarray:
    """n well-separated colours (golden-ratio hues, alternating value/saturation), uint8 [n, 3]."""
    out = []
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        s = 0.55 + 0.45 * ((i // 2) % 2)
        v = 0.95 - 0.3 * ((i // 5) % 2)
        out.append([int(255 * t) for t in colorsys.hsv_to_rgb(h, s, v)])
    return np.array(out, dtype=np.uint8)


def display_levels(levels: list[int], target: int, rows: int = 8) -> list[int]:
    """At most `rows` merge levels to draw: the first, the target, the last, and spaced ones between."""
    top, bottom = max(levels), min(levels)
    picks = {top, bottom, target} if target in levels else {top, bottom}
    for t in np.geomspace(top, bottom, num=max(2, rows)):
        if len(picks) >= rows:
            break
        nearest = min(levels, key=lambda v: abs(v - t))
        picks.add(nearest)
    return sorted(picks, reverse=True)


@torch.no_grad()
def merge_tree_png(result: KlishResult, images: torch.Tensor, feats: torch.Tensor, target: int,
                   rows: int = 8) -> bytes:
    """Top row the images; below, one row of cluster masks per merge level (K on the left).

    A cluster keeps its colour through the merges that absorb others into it, so a user
    can follow which parts join as K falls, and pick K."""
    from PIL import Image, ImageDraw

    colours = palette(result.kept_k)
    n, h = len(images), min(256, max(64, images.shape[1]))  # cell size: readable, bounded
    levels = display_levels(list(result.levels), target, rows)
    label_w = 56
    canvas = Image.new("RGB", (label_w + n * h, (len(levels) + 1) * h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, img in enumerate(images.numpy()):
        canvas.paste(Image.fromarray(img).resize((h, h), Image.NEAREST), (label_w + j * h, 0))
    draw.text((4, h // 2 - 6), "image", fill=(0, 0, 0))
    flat = feats.flatten(2).transpose(1, 2)  # [n, r*r, D]
    r = feats.shape[-1]
    for row, k in enumerate(levels, start=1):
        level = result.levels[k]
        classes = (flat @ level.weight.T + level.bias).argmax(-1).reshape(n, r, r).numpy()
        ids = np.array(level.ids)
        for j in range(n):
            rgb = colours[ids[classes[j]]]
            canvas.paste(Image.fromarray(rgb).resize((h, h), Image.NEAREST), (label_w + j * h, row * h))
        label = f"K={k}" + (" *" if k == target else "")
        draw.text((4, row * h + h // 2 - 6), label, fill=(0, 0, 0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- the command's work


@dataclass
class ClusterRun:
    result: KlishResult
    extractor: ClusterExtractor
    out: Path
    seconds: float


def cluster_generator(G, k: int, n: int, out: str | Path, layers: list[str], settings: KlishSettings,
                      sampling: Sampling = Sampling(), first_seed: int = 0, samples: int = 6, device: str = "cpu",
                      source: str | None = None, overwrite: bool = False, on_merge=None) -> ClusterRun:
    """KLiSH on `n` generated images; writes DIR/{extractor/, merge_tree.png, clusters.json} atomically."""
    import time

    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; choose another --out or pass --overwrite")
    if k < 2:
        raise UserError(f"--k must be at least 2, got {k}")
    t0 = time.perf_counter()
    seeds = list(range(first_seed, first_seed + n))
    resolution = settings.resolution or min(G.img_resolution, 64)
    generated = generate_all(G, seeds, layers, sampling, device, max_resolution=resolution)
    template = feature_template(G, layers, generated, sampling, source=source)
    x = sample_pixels(template, generated.acts, resolution, settings.max_pixels, settings.seed)
    result = klish(x, template, settings, stop_k=2, on_merge=on_merge)
    extractor = result.extractor(k)
    shown = min(samples, n)
    feats = image_features(template, {a: v[:shown] for a, v in generated.acts.items()}, resolution)
    png = merge_tree_png(result, generated.images[:shown], feats, k)
    record = {"generator": extractor.config.generator, "layers": layers, "seeds": seeds,
              "sampling": sampling.as_dict(), "settings": asdict(settings), "clustering_resolution": resolution,
              "pixels": len(x), "k": k, "initial_k": result.initial_k, "kept_after_filter": result.kept_k,
              "classes": extractor.config.classes,
              "levels": {str(lv): {"ids": L.ids, "mean_svm_iou": round(L.mean_iou, 4),
                                   "svm_agreement": round(L.agreement, 4)}
                         for lv, L in sorted(result.levels.items(), reverse=True)},
              "merges": [asdict(m) for m in result.merges]}
    seconds = time.perf_counter() - t0
    record["seconds"] = round(seconds, 2)
    with atomic.directory(out, overwrite=overwrite) as tmp:
        save_extractor(extractor, tmp / "extractor")
        (tmp / "merge_tree.png").write_bytes(png)
        (tmp / "clusters.json").write_text(json.dumps(record, indent=2) + "\n")
    return ClusterRun(result, extractor, out, seconds)


def levels_summary(result: KlishResult) -> list[tuple[int, float, str]]:
    """(K, mean SVM IoU, 'absorbed -> into' of the merge that led to K) for tables."""
    rows = []
    merges = {m.k - 1: m for m in result.merges}
    for k in sorted(result.levels, reverse=True):
        m = merges.get(k)
        rows.append((k, result.levels[k].mean_iou, f"{m.absorbed} -> {m.into}" if m else "-"))
    return rows
