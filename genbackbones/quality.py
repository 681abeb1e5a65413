"""A generator quality number for the procedural faces domain: a domain Fréchet distance.

FID needs Inception weights (not available offline) and measures ImageNet-ish
features anyway. Here the feature space is a small CNN trained by this module to
predict the domain's attributes (hair colour, skin tone, glasses, smile, pose)
from rendered faces, so its features encode exactly what makes a face of this
domain. The Fréchet distance between Gaussian fits of two feature sets is

    FD = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

It is reported for generated-vs-real next to real-vs-real (two disjoint real
sets: the floor, set by sampling noise) and a random-init generator vs real (the
ceiling of "nothing learned"); a broken generator lands near the ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data.faces import ATTRIBUTES, FaceDomain, to_tensor


class AttributeNet(nn.Module):
    """A small CNN with one linear head per attribute; `features` is the 128-d penultimate layer.

    `heads` maps attribute name -> number of classes (default: the bundled domain's attributes),
    so the same feature space can be trained on any labelled image set, e.g. real faces.
    """

    def __init__(self, width: int = 32, heads: dict[str, int] | None = None):
        super().__init__()
        heads = heads or {name: len(classes) for name, classes in ATTRIBUTES.items()}
        layers, ch = [], 3
        for out in (width, width * 2, width * 4, width * 4):
            layers += [nn.Conv2d(ch, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
            ch = out
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({name: nn.Linear(ch, n) for name, n in heads.items()})

    def features(self, img: torch.Tensor) -> torch.Tensor:
        return self.body(img)

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.features(img)
        return {name: head(f) for name, head in self.heads.items()}


@dataclass
class FeatureNetReport:
    steps: int
    test_accuracy: dict[str, float]


def train_attribute_net(size: int = 64, steps: int = 600, batch: int = 64, seed: int = 0,
                        num_test: int = 1000) -> tuple[AttributeNet, FeatureNetReport]:
    """Train the feature network on the domain's train split; accuracy measured on its test split."""
    domain = FaceDomain(seed=0, size=size)
    train = domain.split_indices("train")

    def next_batch(step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        data = domain.render(train[step * batch: (step + 1) * batch])
        return to_tensor(data["images"]), {k: torch.from_numpy(v) for k, v in data["labels"].items()}

    net = _fit(AttributeNet, next_batch, steps, seed)
    test = domain.render(domain.first_indices(num_test, "test"))
    with torch.no_grad():
        out = net(to_tensor(test["images"]))
    acc = {k: float((out[k].argmax(1).numpy() == test["labels"][k]).mean()) for k in ATTRIBUTES}
    return net, FeatureNetReport(steps, acc)


def train_attribute_net_on(images: torch.Tensor, labels: dict[str, torch.Tensor], steps: int = 600,
                           batch: int = 64, seed: int = 0) -> AttributeNet:
    """The same feature network on any labelled images (float [N, 3, R, R] in [-1, 1]; class indices per name)."""
    heads = {name: int(y.max()) + 1 for name, y in labels.items()}
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))

    def next_batch(step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        start = (step * batch) % max(1, len(images) - batch + 1)
        idx = order[start: start + batch]
        return images[idx], {name: y[idx] for name, y in labels.items()}

    return _fit(lambda: AttributeNet(heads=heads), next_batch, steps, seed)


def _fit(make_net, next_batch, steps: int, seed: int) -> AttributeNet:
    """Build the net under `seed`, then AdamW + one-cycle on summed cross-entropy; returns it in eval mode."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = make_net()
        opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
        net.train()
        for step in range(steps):
            img, labels = next_batch(step)
            out = net(img)
            loss = sum(F.cross_entropy(out[k], labels[k].long()) for k in labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


@torch.no_grad()
def features_of(net: AttributeNet, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([net.features(images[i:i + batch].clamp(-1, 1)) for i in range(0, len(images), batch)]).double()


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """FD between Gaussian fits of two [N, D] feature sets (float64, symmetric square roots)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrtm_psd(cov_a)
    middle = _sqrtm_psd(root_a @ cov_b @ root_a)
    return float((mu_a - mu_b).square().sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * torch.trace(middle))


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


@torch.no_grad()
def generated_images(G, n: int, seed: int = 0, batch: int = 250, truncation_psi: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, batch):
        z = torch.randn(min(batch, n - i), G.z_dim, generator=g)
        out.append(G(z, None, truncation_psi=truncation_psi, noise_mode="random"))
    return torch.cat(out)


def real_images(n: int, split: str, size: int = 64, offset: int = 0) -> torch.Tensor:
    domain = FaceDomain(seed=0, size=size)
    idx = domain.split_indices(split)[offset: offset + n]
    return torch.cat([to_tensor(domain.render(idx[i:i + 500])["images"]) for i in range(0, n, 500)])


def random_init_like(G, seed: int = 0):
    """The same architecture (StyleGAN2 or StyleGAN3: G's own class) with fresh random weights: what 'nothing
    learned' scores."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return type(G)(**G.init_kwargs).eval().requires_grad_(False)


def quality_report(G, n: int = 5000, seed: int = 0, random_G=None, net_steps: int = 600) -> dict:
    """The three numbers: real-vs-real, generated-vs-real, random-init-vs-real (lower is better)."""
    size = G.img_resolution
    net, net_report = train_attribute_net(size=size, seed=seed, steps=net_steps)
    reference = features_of(net, real_images(n, "test", size))
    other_real = features_of(net, real_images(n, "train", size, offset=100_000))
    report = {
        "n": n,
        "feature_net_test_accuracy": net_report.test_accuracy,
        "real_vs_real": frechet_distance(other_real, reference),
        "generated_vs_real": frechet_distance(features_of(net, generated_images(G, n, seed)), reference),
    }
    if random_G is not None:
        report["random_init_vs_real"] = frechet_distance(features_of(net, generated_images(random_G, n, seed)),
                                                         reference)
    return report
