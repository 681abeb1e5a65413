"""The generator as a labelled-data factory, measured on the bundled faces domain (issue 9).

Three experiments, one generator (default: the bundled faces64 StyleGAN2):

(a) Few-shot extractors (paper 004 Table 2): a linear extractor (LSE; also the light
    decoder of paper 000) trained on 1/4/8/16 annotated generated images, mIoU on held-out
    generated images relative to the same extractor fully trained on many.
(b) Paper 000 Algorithm 2 (Table 1): a segmentation network trained on pairs synthesised
    with a 20-annotation extractor vs the same network trained on 20 real labelled faces,
    both tested on real faces with exact masks.
(c) KLiSH vs k-means (paper 002 Table IV): maximum-matching mIoU of the clusters at equal K.

Who annotates generated images: the faces renderer gives exact masks for *real* faces
only, so a segmentation network trained on plenty of real labelled faces (the
"annotator", scored on real test faces in the report) labels generated images; its
labels are the ground truth of (a) and (c) and the "user annotations" of (a) and (b).
The segmentation network everywhere is the evaluator's (`evaluate.tasks.DenseModel`:
a timm backbone, random init, every level fused at stride 4), trained with AdamW,
cosine decay, horizontal flips.

    python benchmarks/semantics.py                      # default size (66 min measured on one core, --threads 1)
    python benchmarks/semantics.py --tiny               # smoke test of the script (~1-2 min)
    python benchmarks/semantics.py --generator PATH     # any generator of the faces domain

Writes OUT/results.json and OUT/README.md (three tables, settings, machine); OUT defaults
to benchmarks/results/semantics (semantics_tiny with --tiny).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: spinning threads stall a shared CPU

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from rich.console import Console  # noqa: E402

from genbackbones.data.faces import SEG_CLASSES, FaceDomain  # noqa: E402
from genbackbones.errors import UserError  # noqa: E402
from genbackbones.evaluate.data import Labelled, Schema  # noqa: E402
from genbackbones.evaluate.metrics import IGNORE_INDEX, confusion_matrix, mean_std, segmentation_scores  # noqa: E402
from genbackbones.evaluate.tasks import Batches, DenseModel, SegmentationSettings  # noqa: E402
from genbackbones.generators.open import open_generator  # noqa: E402
from genbackbones.semantics.activations import (Generated, Sampling, default_layers, generate_all,  # noqa: E402
                                                generator_fingerprint, one_per_resolution)
from genbackbones.semantics.annotate import (TrainSettings, new_extractor, score, stored_pairs,  # noqa: E402
                                             train_extractor)
from genbackbones.semantics.klish import (KlishSettings, cluster_confusion, feature_template, klish,  # noqa: E402
                                          kmeans_extractor, max_matching_miou, sample_pixels)
from genbackbones.semantics.synthesize import synthesize  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# disjoint seed ranges for every use of generated images
SEEDS = {"eval": 1_000_000, "full": 2_000_000, "fewshot": 3_000_000, "alg2": 4_000_000, "synth": 5_000_000,
         "cluster": 6_000_000}


@dataclass
class Size:
    arch: str = "resnet18"  # segmentation backbone (random init) of the annotator and of (b)
    annot_pool: int = 2000  # real labelled faces the annotator learns from
    annot_steps: int = 1000
    annot_stride: int = 2  # finer than the evaluator's 4, which caps mIoU at ~45 on 64 px faces (README, Evaluate)
    seg_steps: int = 1000  # (b): both segmentation networks
    seg_stride: int = 4  # (b): the evaluator's protocol
    seg_batch: int = 16
    test_n: int = 500  # real test faces
    eval_n: int = 256  # generated images with annotator labels: the test set of (a) and (c)
    full_n: int = 384  # (a): generated images the fully trained extractors learn from
    full_steps: int = 1000
    full_batch: int = 8
    shots: list[int] = field(default_factory=lambda: [1, 4, 8, 16])
    repeats: int = 3  # (a): annotation sets per shot count
    fewshot_steps: int = 300
    fewshot_extractors: list[str] = field(default_factory=lambda: ["linear", "light"])
    alg2_annotations: int = 20
    alg2_extractor: str = "light"  # paper 000 uses its light decoder
    alg2_extractor_steps: int = 600
    syn_n: int = 2000  # (b): synthesised pairs
    cluster_n: int = 32  # (c): generated images clustered
    init_k: int = 50
    max_pixels: int = 30_000
    ks: list[int] = field(default_factory=lambda: [8, 12, 16])
    kmeans_seeds: int = 3


TINY = Size(annot_pool=200, annot_steps=30, seg_steps=25, seg_batch=8, test_n=64, eval_n=24, full_n=32,
            full_steps=60, shots=[1, 4, 8, 16], repeats=1, fewshot_steps=40, fewshot_extractors=["linear"],
            alg2_extractor_steps=40, syn_n=48, cluster_n=6, init_k=12, max_pixels=3000, ks=[4, 8],
            kmeans_seeds=1)


# ----------------------------------------------------------------------------- segmentation networks


def to_labelled(images_hwc: torch.Tensor, masks: torch.Tensor, names: list[str]) -> Labelled:
    return Labelled(images_hwc.permute(0, 3, 1, 2).contiguous(), names, masks=masks.long())


def real_faces(resolution: int, n: int, split: str, start: int = 0) -> Labelled:
    domain = FaceDomain(0, resolution)
    indices = domain.split_indices(split)[start:start + n]
    batch = domain.render(indices)
    return to_labelled(torch.from_numpy(batch["images"]), torch.from_numpy(batch["masks"]),
                       [f"faces/{i:07d}" for i in indices])


def train_segmenter(train: Labelled, resolution: int, size: Size, steps: int, seed: int, stride: int) -> DenseModel:
    """The evaluator's segmentation network, random init, AdamW + warm-up + cosine, flips."""
    import timm

    torch.manual_seed(seed)
    backbone = timm.create_model(size.arch, pretrained=False, features_only=True)
    model = DenseModel(backbone, (0.5,) * 3, (0.5,) * 3, len(SEG_CLASSES), hidden=64, stride=stride)
    settings = SegmentationSettings(batch_size=size.seg_batch)
    batches = Batches(train, Schema("segmentation", resolution, classes=SEG_CLASSES), settings, seed, "cpu", True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    warm = max(1, min(50, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + np.cos(np.pi * (s - warm) / max(1, steps - warm))))
    model.train()
    for _ in range(steps):
        b = batches.next()
        logits = F.interpolate(model(b.images), size=(resolution, resolution), mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, b.masks, ignore_index=IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def segment(model: DenseModel, images_nchw: torch.Tensor, batch: int = 64) -> torch.Tensor:
    res = images_nchw.shape[-1]
    out = []
    for i in range(0, len(images_nchw), batch):
        logits = model(images_nchw[i:i + batch])
        out.append(F.interpolate(logits, size=(res, res), mode="bilinear", align_corners=False).argmax(1))
    return torch.cat(out)


def seg_scores(pred: torch.Tensor, gt: torch.Tensor) -> dict:
    scores = segmentation_scores(confusion_matrix(pred, gt, len(SEG_CLASSES)), SEG_CLASSES)
    return {"miou": round(scores["miou"], 2), "pixel_accuracy": round(scores["pixel_accuracy"], 2),
            "iou": {k: (None if v is None else round(v, 1)) for k, v in scores["iou"].items()}}


# ----------------------------------------------------------------------------- generated data


class Bench:
    """Shared state: the generator, the annotator and the annotated evaluation set."""

    def __init__(self, generator: str, size: Size, console: Console):
        self.size, self.console = size, console
        self.G = open_generator(generator).G
        self.res = self.G.img_resolution
        self.fingerprint = generator_fingerprint(self.G)
        self.layers = default_layers(self.G)
        self.timings: dict[str, float] = {}

    def timed(self, name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 1)
        return out

    def generated(self, key: str, n: int, offset: int = 0, half: bool = True) -> Generated:
        """Generated images of a seed range, with fp16 activations (memory) and annotator labels."""
        seeds = list(range(SEEDS[key] + offset, SEEDS[key] + offset + n))
        g = self.timed("generate", generate_all, self.G, seeds, self.layers, Sampling())
        if half:
            g.acts = {k: v.half() for k, v in g.acts.items()}
        return g

    def annotate(self, g: Generated) -> torch.Tensor:
        return self.timed("annotate", segment, self.annotator, g.images.permute(0, 3, 1, 2).contiguous())

    def setup(self) -> dict:
        s = self.size
        self.console.print(f"annotator: {s.arch} on {s.annot_pool} real faces, {s.annot_steps} steps")
        pool = real_faces(self.res, s.annot_pool, "train")
        self.annotator = self.timed("annotator", train_segmenter, pool, self.res, s, s.annot_steps, 0,
                                    s.annot_stride)
        self.test = real_faces(self.res, s.test_n, "test")
        annot = seg_scores(segment(self.annotator, self.test.images), self.test.masks)
        self.console.print(f"  annotator on {s.test_n} real test faces: mIoU {annot['miou']:.1f}")
        self.eval_set = self.generated("eval", s.eval_n)
        self.eval_masks = self.annotate(self.eval_set)
        return annot


# ----------------------------------------------------------------------------- (a) few-shot extractors


def fewshot(bench: Bench) -> dict:
    s = bench.size
    pool = bench.generated("full", s.full_n)
    pool_masks = bench.annotate(pool)
    out = {}
    for kind in s.fewshot_extractors:
        full = fit(bench, kind, pool, pool_masks, s.full_steps, s.full_batch, seed=0)
        full_miou = round(score(full, bench.eval_set.acts, bench.eval_masks)["miou"], 2)
        bench.console.print(f"(a) {kind}: fully trained on {s.full_n} images -> mIoU {full_miou:.1f}")
        rows = {}
        for n in s.shots:
            values = []
            for r in range(s.repeats):
                g = bench.generated("fewshot", n, offset=r * 1000)
                ext = fit(bench, kind, g, bench.annotate(g), s.fewshot_steps, min(n, 8), seed=r)
                values.append(score(ext, bench.eval_set.acts, bench.eval_masks)["miou"])
            mean, std = mean_std(values)
            rows[n] = {"miou": round(mean, 2), "std": round(std, 2), "runs": [round(v, 2) for v in values],
                       "relative": round(mean / full_miou, 3)}
            bench.console.print(f"    {n:>2}-shot: mIoU {mean:.2f} ± {std:.2f} ({mean / full_miou:.1%} of full)")
        out[kind] = {"full": {"images": s.full_n, "steps": s.full_steps, "miou": full_miou}, "shots": rows}
    return out


def fit(bench: Bench, kind: str, g: Generated, masks: torch.Tensor, steps: int, batch: int, seed: int):
    ext = new_extractor(kind, bench.G, bench.layers, SEG_CLASSES, g, Sampling(), fingerprint=bench.fingerprint)
    settings = TrainSettings(steps=steps, batch_size=batch, seed=seed, log_every=max(1, steps))
    bench.timed(f"train {kind}", train_extractor, ext, stored_pairs(g.acts, masks, batch), settings)
    return ext


# ----------------------------------------------------------------------------- (b) Algorithm 2


def algorithm2(bench: Bench, work: Path) -> dict:
    s = bench.size
    g = bench.generated("alg2", s.alg2_annotations)
    extractor = fit(bench, s.alg2_extractor, g, bench.annotate(g), s.alg2_extractor_steps,
                    min(8, s.alg2_annotations), seed=0)
    bench.console.print(f"(b) synthesising {s.syn_n} pairs with the {s.alg2_annotations}-annotation "
                        f"{s.alg2_extractor} extractor")
    bench.timed("synthesize", synthesize, bench.G, extractor, s.syn_n, work / "pairs", first_seed=SEEDS["synth"],
                fingerprint=bench.fingerprint, progress=False)
    synthetic = read_pairs(work / "pairs", range(SEEDS["synth"], SEEDS["synth"] + s.syn_n))
    real20 = real_faces(bench.res, s.alg2_annotations, "train", start=s.annot_pool)  # not the annotator's faces
    rows = {}
    for name, train in (("Algorithm 2 (synthetic pairs)", synthetic), ("20 real labelled faces", real20)):
        model = bench.timed("segmentation nets", train_segmenter, train, bench.res, s, s.seg_steps, 0,
                            s.seg_stride)
        rows[name] = {"train_images": len(train), **seg_scores(segment(model, bench.test.images), bench.test.masks)}
        bench.console.print(f"    {name}: real-test mIoU {rows[name]['miou']:.1f}")
    return {"extractor": s.alg2_extractor, "annotations": s.alg2_annotations, "synthetic_pairs": s.syn_n,
            "seg_steps": s.seg_steps, "rows": rows}


def read_pairs(folder: Path, seeds: range) -> Labelled:
    from PIL import Image

    images, masks = [], []
    for seed in seeds:
        images.append(np.asarray(Image.open(folder / "images" / f"seed{seed:07d}.png").convert("RGB")))
        masks.append(np.asarray(Image.open(folder / "masks" / f"seed{seed:07d}.png")))
    return to_labelled(torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks)),
                       [f"seed{s}" for s in seeds])


# ----------------------------------------------------------------------------- (c) KLiSH vs k-means


def clustering(bench: Bench) -> dict:
    s = bench.size
    layers = one_per_resolution(bench.G)
    seeds = list(range(SEEDS["cluster"], SEEDS["cluster"] + s.cluster_n))
    g = generate_all(bench.G, seeds, layers)
    template = feature_template(bench.G, layers, g, Sampling(), fingerprint=bench.fingerprint)
    settings = KlishSettings(init_k=s.init_k, max_pixels=s.max_pixels)
    resolution = min(bench.res, 64)
    x = sample_pixels(template, g.acts, resolution, s.max_pixels, settings.seed)
    result = bench.timed("KLiSH", klish, x, template, settings, stop_k=min(s.ks))
    bench.console.print(f"(c) KLiSH: k-means {result.initial_k} -> {result.kept_k} kept -> merged down to "
                        f"{min(s.ks)} ({bench.timings['KLiSH']:.0f}s)")
    rows = {}
    for k in [k for k in s.ks if k <= result.kept_k]:
        klish_miou = matched_miou(result.extractor(k), bench)
        km = [matched_miou(kmeans_extractor(x, template, k, replace(settings, seed=seed)), bench)
              for seed in range(s.kmeans_seeds)]
        mean, std = mean_std(km)
        rows[k] = {"klish": round(klish_miou, 2), "kmeans": round(mean, 2), "kmeans_std": round(std, 2),
                   "kmeans_runs": [round(v, 2) for v in km]}
        bench.console.print(f"    K={k}: KLiSH {klish_miou:.2f}, k-means {mean:.2f} ± {std:.2f}")
    return {"layers": layers, "cluster_images": s.cluster_n, "pixels": len(x), "initial_k": result.initial_k,
            "kept_after_filter": result.kept_k, "rows": rows}


@torch.no_grad()
def matched_miou(extractor, bench: Bench, batch: int = 16) -> float:
    k = extractor.config.num_classes
    cm = torch.zeros(len(SEG_CLASSES), k, dtype=torch.long)
    acts = bench.eval_set.acts
    for i in range(0, len(bench.eval_masks), batch):
        pred = extractor.predict({n: acts[n][i:i + batch] for n in extractor.config.layers})
        cm += cluster_confusion(pred, bench.eval_masks[i:i + batch], len(SEG_CLASSES), k)
    return max_matching_miou(cm)[0]


# ----------------------------------------------------------------------------- report


def markdown(results: dict) -> str:
    a, b, c = results.get("fewshot"), results.get("algorithm2"), results.get("clustering")
    lines = [f"# Semantic extractors on the bundled faces ({'tiny smoke run' if results['tiny'] else 'measured'})",
             "", f"Generator `{results['generator']}` (fingerprint {results['fingerprint'][:12]}), "
             f"{results['resolution']} px. Annotator ({results['size']['arch']}, random init, "
             f"{results['size']['annot_pool']} real faces): mIoU {results['annotator']['miou']:.1f} on "
             f"{results['size']['test_n']} real test faces. Machine: {results['machine']}. "
             f"Total {results['minutes']:.1f} min.", "", f"    {results['command']}", ""]
    if a:
        lines += ["## (a) Few-shot extractors (paper 004 Table 2)", "",
                  "mIoU (%) on held-out generated images labelled by the annotator; mean ± std over annotation "
                  "sets; in brackets: fraction of the fully trained extractor.", "",
                  "| extractor | " + " | ".join(f"{n}-shot" for n in next(iter(a.values()))["shots"]) + " | full |",
                  "|---" * (len(next(iter(a.values()))["shots"]) + 2) + "|"]
        for kind, row in a.items():
            cells = [f"{v['miou']:.1f} ± {v['std']:.1f} ({v['relative']:.0%})" for v in row["shots"].values()]
            lines.append(f"| {kind} | " + " | ".join(cells) + f" | {row['full']['miou']:.1f} "
                         f"({row['full']['images']} images) |")
        lines.append("")
    if b:
        lines += ["## (b) Paper 000 Algorithm 2 (Table 1)", "",
                  f"Same segmentation network ({results['size']['arch']}, random init, {b['seg_steps']} steps, "
                  f"decoder stride {results['size']['seg_stride']}), tested on {results['size']['test_n']} real "
                  "faces with exact masks. Last row: the annotator (decoder stride "
                  f"{results['size']['annot_stride']}, {results['size']['annot_steps']} steps), for reference.", "",
                  "| trained on | images | mIoU (%) | pixel acc. (%) |", "|---|---|---|---|"]
        for name, row in b["rows"].items():
            lines.append(f"| {name} | {row['train_images']} | {row['miou']:.1f} | {row['pixel_accuracy']:.1f} |")
        lines += [f"| (annotator: {results['size']['annot_pool']} real labelled faces) | "
                  f"{results['size']['annot_pool']} | {results['annotator']['miou']:.1f} | "
                  f"{results['annotator']['pixel_accuracy']:.1f} |", "",
                  f"Synthetic pairs: {b['synthetic_pairs']} from a {b['extractor']} extractor trained on "
                  f"{b['annotations']} generated images annotated by the annotator.", ""]
    if c:
        lines += ["## (c) KLiSH vs k-means (paper 002 Table IV)", "",
                  f"Maximum-matching mIoU (%) on the held-out generated images; {c['cluster_images']} images "
                  f"clustered ({c['pixels']} pixels), k-means {c['initial_k']} -> {c['kept_after_filter']} after "
                  "filtering; k-means baseline on the same features, mean ± std over seeds.", "",
                  "| K | KLiSH | k-means |", "|---|---|---|"]
        for k, row in c["rows"].items():
            lines.append(f"| {k} | {row['klish']:.1f} | {row['kmeans']:.1f} ± {row['kmeans_std']:.1f} |")
        lines.append("")
    lines += ["Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in results["timings"].items()), ""]
    return "\n".join(lines)


def machine() -> str:
    return (f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generator", default="bundled", help="default: the bundled faces64 generator")
    parser.add_argument("--tiny", action="store_true", help="minutes-long smoke test of the script, not a measurement")
    parser.add_argument("--experiments", default="a,b,c", help="subset of a,b,c")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = TINY if args.tiny else Size()
    out = Path(args.out or REPO / "benchmarks" / "results" / ("semantics_tiny" if args.tiny else "semantics"))
    console = Console()
    started = time.perf_counter()
    try:
        bench = Bench(args.generator, size, console)
    except UserError as error:
        Console(stderr=True).print(f"[red]error:[/] {error}", highlight=False)
        return 2
    results = {"generator": args.generator, "fingerprint": bench.fingerprint, "resolution": bench.res,
               "tiny": args.tiny, "size": asdict(size), "machine": machine(),
               "command": "python benchmarks/semantics.py " + " ".join(argv if argv is not None else
                                                                       __import__("sys").argv[1:]),
               "annotator": bench.setup()}
    chosen = set(args.experiments.split(","))
    if "a" in chosen:
        results["fewshot"] = fewshot(bench)
    if "b" in chosen:
        with tempfile.TemporaryDirectory(prefix="semantics-bench-") as work:
            results["algorithm2"] = algorithm2(bench, Path(work))
    if "c" in chosen:
        results["clustering"] = clustering(bench)
    results["timings"] = bench.timings
    results["minutes"] = round((time.perf_counter() - started) / 60, 2)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "README.md").write_text(markdown(results))
    console.print(markdown(results), soft_wrap=True, highlight=False)
    console.print(f"[green]written[/] {out}/results.json and README.md ({results['minutes']:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
