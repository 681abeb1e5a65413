"""The generator as a labelled-data factory: extractors, annotate, KLiSH, synthesize (tiny runs).

Generators: `random:tiny32` (a seeded random StyleGAN2) and the NVIDIA reference fixture
`small_skip` converted to our folder format (skipped when ../shared is absent). Masks
with a known answer come from a *teacher*: a linear extractor with fixed random weights
on two coarse layers, so a correct student must recover them from the activations.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from genbackbones.cli import app
from genbackbones.generators.sampling import generate_images, write_seed_files
from genbackbones.errors import UserError
from genbackbones.generators.open import open_generator
from genbackbones.semantics import synthesize as synth_module
from genbackbones.semantics.activations import (Sampling, concatenated, default_layers, generate, generate_all,
                                                generator_fingerprint, one_per_resolution, parse_layers)
from genbackbones.semantics.annotate import (Annotations, TrainSettings, load_annotations, new_extractor, score,
                                             train_on_annotations)
from genbackbones.semantics.extractors import check_compatible, load_extractor, save_extractor
from genbackbones.semantics.klish import (KlishSettings, cluster_confusion, cluster_generator, kmeans,
                                          max_matching_miou)
from genbackbones.semantics.synthesize import synthesize

from .conftest import FIXTURES

runner = CliRunner()
COARSE = ["synthesis.b8.conv1", "synthesis.b16.conv1"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    return open_generator("random:tiny32").G


@pytest.fixture(scope="module")
def nvidia_folder(tmp_path_factory) -> Path:
    """The NVIDIA fixture generator, converted to our format (what `generator convert` writes)."""
    from safetensors.torch import load_file

    from genbackbones.generators.formats.folder import Provenance, save_generator
    from genbackbones.generators.stylegan2 import Generator

    path = FIXTURES / "small_skip"
    if not (path / "G_ema.safetensors").exists():
        pytest.skip(f"NVIDIA reference fixtures not found at {path} (they live in ../shared beside the repo)")
    kwargs = json.loads((path / "init_kwargs.json").read_text())["G"]
    G = Generator(**kwargs).eval()
    G.load_state_dict(load_file(path / "G_ema.safetensors"))
    return save_generator(tmp_path_factory.mktemp("nv") / "small_skip", G, None,
                          Provenance(source="small_skip/network.pkl", source_sha256="ab" * 32))


@pytest.fixture(params=["bundled", "nvidia"])
def generator_source(request) -> str:
    """Every command runs on the shipped generator and on a converted NVIDIA one."""
    return "bundled" if request.param == "bundled" else str(request.getfixturevalue("nvidia_folder"))


def teacher(G, seeds, layers=COARSE, classes=4, seed=1):
    """A linear extractor with fixed random weights: masks that are a known function of the activations."""
    generated = generate_all(G, seeds, layers)
    ext = new_extractor("linear", G, layers, [f"c{i}" for i in range(classes)], generated, Sampling())
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in ext.maps:
            m.weight.copy_(torch.randn(m.weight.shape, generator=rng))
            m.bias.zero_()
    return ext.eval()


def one_line_error(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.output


# ----------------------------------------------------------------------------- activations


def test_seeds_reproduce_generator_sample_images_and_activations(tiny):
    layers = default_layers(tiny)
    assert layers == [n for n in tiny.tap_specs() if n.endswith(("conv0", "conv1"))]
    assert one_per_resolution(tiny) == [f"synthesis.b{r}.conv1" for r in (4, 8, 16, 32)]
    batch = generate(tiny, [3, 4, 5], layers)
    assert torch.equal(batch.images, generate_images(tiny, [3, 4, 5]))  # what `generator sample` writes
    alone = generate(tiny, [4], layers)
    assert torch.equal(alone.images[0], batch.images[1])
    for name in layers:
        assert alone.acts[name].shape[1:] == batch.acts[name].shape[1:]
        torch.testing.assert_close(alone.acts[name][0], batch.acts[name][1], atol=1e-5, rtol=1e-5)
    stacked = concatenated(batch.acts, [*COARSE, "synthesis.b32.conv1"], 32)
    assert stacked.shape == (3, 64 + 64 + 32, 32, 32)
    assert torch.equal(stacked[:, 128:], batch.acts["synthesis.b32.conv1"])  # native resolution: unchanged
    assert parse_layers(tiny, "synthesis.b8.conv1") == ["synthesis.b8.conv1"]
    with pytest.raises(UserError, match="unknown layer"):
        parse_layers(tiny, "synthesis.b8.nope")
    with pytest.raises(UserError, match="cannot be reproduced"):
        generate(tiny, [0], layers, Sampling(noise_mode="random"))


# ----------------------------------------------------------------------------- extractors


def test_linear_extractor_recovers_known_semantics_on_held_out_seeds(tiny):
    ref = teacher(tiny, range(48))
    held = generate_all(tiny, range(32, 48), COARSE)
    masks = ref.predict(generate_all(tiny, range(32), COARSE).acts)
    assert (torch.bincount(masks.flatten(), minlength=4) > 0.1 * masks.numel()).all()  # 4 real classes
    annotations = Annotations(list(range(32)), masks, ("c0", "c1", "c2", "c3"), Sampling(), [])
    result = train_on_annotations(tiny, annotations, "linear", COARSE, TrainSettings(steps=400, batch_size=16))
    losses = [loss for _, loss in result.curve]
    assert losses[-1] < 0.4 * losses[0]
    assert result.scores["miou"] > 85
    held_scores = score(result.extractor, held.acts, ref.predict(held.acts))
    assert held_scores["miou"] > 80, held_scores
    untrained = new_extractor("linear", tiny, COARSE, annotations.classes, held, Sampling())
    assert score(untrained, held.acts, ref.predict(held.acts))["miou"] < 50  # the bar means something


@pytest.mark.parametrize("kind", ["nonlinear", "light"])
def test_nonlinear_and_light_train_and_round_trip_through_disk(tiny, tmp_path, kind):
    ref = teacher(tiny, range(8))
    masks = ref.predict(generate_all(tiny, range(8), COARSE).acts)
    annotations = Annotations(list(range(8)), masks, ("a", "b", "c", "d"), Sampling(), [])
    layers = default_layers(tiny)
    result = train_on_annotations(tiny, annotations, kind, layers, TrainSettings(steps=60, batch_size=4))
    assert result.curve[-1][1] < 0.7 * result.curve[0][1]
    assert result.scores["miou"] > 50
    folder = save_extractor(result.extractor, tmp_path / kind)
    loaded = load_extractor(folder)
    acts = generate(tiny, [100, 101], layers).acts
    logits = loaded(acts)
    assert logits.shape == (2, 4, 32, 32)
    torch.testing.assert_close(logits, result.extractor.eval()(acts))
    config = json.loads((folder / "extractor.json").read_text())
    assert config["kind"] == kind and config["layers"] == layers and config["hidden"] == 32
    assert config["generator"]["fingerprint"] == generator_fingerprint(tiny)
    assert len(config["training"]["curve"]) == 6 and config["training"]["seeds"] == list(range(8))
    with pytest.raises(UserError, match="already exists"):
        save_extractor(result.extractor, folder)


def test_extractor_for_another_generator_is_refused(tiny):
    other = open_generator("random:tiny32", seed=1).G  # same architecture, other weights
    ext = teacher(tiny, range(2))
    check_compatible(ext, tiny, generator_fingerprint(tiny))
    with pytest.raises(UserError, match="trained for another generator"):
        check_compatible(ext, other, generator_fingerprint(other))
    with pytest.raises(UserError, match="has 128 channels at 8px"):
        check_compatible(ext, open_generator("random:small64").G, "x")


# ----------------------------------------------------------------------------- annotate: files and CLI


def sample_and_draw(generator: str | None, G, folder: Path, seeds: int, ref, palette_png: bool = False) -> Path:
    """`generator sample --save-seeds` (or its file writer, for random generators), then 'annotate' each
    image with the teacher's mask."""
    if generator is not None:
        result = runner.invoke(app, ["generator", "sample", generator, "--n", str(seeds), "--out",
                                     str(folder / "grid.png"), "--save-seeds"])
        assert result.exit_code == 0, result.output
    else:
        write_seed_files(folder / "grid.png", generate_images(G, list(range(seeds))), list(range(seeds)), 2,
                         dict(truncation_psi=1.0, noise_mode="const", class_idx=None))
    index = json.loads((folder / "seeds.json").read_text())
    masks = folder / "masks"
    masks.mkdir()
    seed_list = [e["seed"] for e in index["images"]]
    predicted = ref.predict(generate(G, seed_list, ref.config.layers).acts)
    for entry, mask in zip(index["images"], predicted):
        image = Image.fromarray(mask.numpy().astype(np.uint8))
        if palette_png:
            image = image.convert("P")
            image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
        image.save(masks / f"{Path(entry['file']).stem}.png")
    return masks


def test_annotate_and_synthesize_commands(generator_source, tmp_path):
    G = open_generator(generator_source).G
    ref = teacher(G, range(6))
    masks = sample_and_draw(generator_source, G, tmp_path, 6, ref, palette_png=True)
    out = tmp_path / "ext"
    result = runner.invoke(app, ["annotate", generator_source, "--masks", str(masks), "--extractor", "linear",
                                 "--out", str(out), "--steps", "150", "--classes", "bg,a,b,c",
                                 "--layers", ",".join(COARSE)])
    assert result.exit_code == 0, result.output
    ext = load_extractor(out)
    assert ext.config.classes == ["bg", "a", "b", "c"] and ext.config.training["seeds"] == list(range(6))
    assert ext.config.training["train_scores"]["miou"] > 80
    data = tmp_path / "data"
    result = runner.invoke(app, ["synthesize", generator_source, "--extractor", str(out), "--n", "5",
                                 "--out", str(data), "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (data / "masks").iterdir())
    assert names == [f"seed{s:07d}.png" for s in range(5)]
    # the same batches as --batch-size 2: a batch's composition moves a few pixels by one level on CPU
    for chunk in ([0, 1], [2, 3], [4, 5]):  # synthesize always generates whole batches
        generated = generate(G, chunk, ext.config.layers)
        expected = ext.predict(generated.acts).numpy()
        for i, s in [(i, s) for i, s in enumerate(chunk) if s < 5]:  # seed 5 is generated, not written
            assert np.array_equal(np.asarray(Image.open(data / "masks" / names[s])), expected[i])
            assert np.array_equal(np.asarray(Image.open(data / "images" / names[s])), generated.images[i].numpy())
    manifest = json.loads((data / "synthesis.json").read_text())
    assert manifest["classes"] == ["bg", "a", "b", "c"] and manifest["generator_fingerprint"] == \
        generator_fingerprint(G)


def test_annotate_reads_seeds_from_mask_names_without_a_seeds_file(tiny, tmp_path):
    ref = teacher(tiny, range(3))
    masks = tmp_path / "masks"
    masks.mkdir()
    for seed, mask in zip([7, 9], ref.predict(generate(tiny, [7, 9], COARSE).acts)):
        Image.fromarray(mask.numpy().astype(np.uint8)).save(masks / f"seed{seed}.png")
    annotations = load_annotations(masks, 32)
    assert annotations.seeds == [7, 9] and annotations.classes == ("class_0", "class_1", "class_2", "class_3")
    assert torch.equal(annotations.masks, ref.predict(generate(tiny, [7, 9], COARSE).acts))


def test_bad_annotations_exit_2_with_one_line(tiny, tmp_path):
    ref = teacher(tiny, range(3))
    masks = sample_and_draw(None, tiny, tmp_path, 3, ref)
    base = ["annotate", "random:tiny32", "--masks", str(masks), "--out", str(tmp_path / "x"), "--steps", "2"]
    one_line_error(runner.invoke(app, [*base, "--extractor", "deep"]), "unknown extractor 'deep'")
    one_line_error(runner.invoke(app, [*base, "--classes", "a,b"]), "but only 2 classes are named")
    one_line_error(runner.invoke(app, [*base, "--layers", "synthesis.b9.conv1"]), "unknown layer")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(masks / "seed0001.png")
    one_line_error(runner.invoke(app, base), "mask is 16x16 but the generator makes 32x32")
    (masks / "seed0001.png").unlink()
    one_line_error(runner.invoke(app, base), "no mask for seed 1")
    index = json.loads((tmp_path / "seeds.json").read_text())
    index["noise_mode"] = "random"
    (tmp_path / "seeds.json").write_text(json.dumps(index))
    one_line_error(runner.invoke(app, base), "cannot be reproduced from a seed")
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- KLiSH


def test_max_matching_miou_and_spherical_kmeans():
    gt = torch.tensor([0] * 40 + [1] * 30 + [2] * 30)
    split = torch.tensor([0] * 20 + [3] * 20 + [1] * 30 + [2] * 30)  # class 0 split in two clusters
    miou, assign = max_matching_miou(cluster_confusion(split, gt, 3, 4))
    assert miou == pytest.approx(100.0) and assign == [0, 1, 2, 0]
    merged = torch.tensor([0] * 70 + [1] * 30)  # classes 0 and 1 in one cluster
    miou, _ = max_matching_miou(cluster_confusion(merged, gt, 3, 2))
    assert miou == pytest.approx((40 / 70 + 0 + 1) / 3 * 100)
    rng = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(3, 8, generator=rng), dim=1)
    x = torch.nn.functional.normalize(centres.repeat_interleave(50, 0) + 0.05 * torch.randn(150, 8, generator=rng),
                                      dim=1)
    _, labels = kmeans(x, 3, 20, seed=0)
    truth = torch.arange(3).repeat_interleave(50)
    assert max_matching_miou(cluster_confusion(labels, truth, 3, 3))[0] == pytest.approx(100.0)


def test_klish_recovers_separable_classes_that_kmeans_splits():
    """Paper 002 Fig. 2 in miniature: a long arc and a compact blob on the sphere. k-means at K=2 cuts
    the arc in half; KLiSH over-clusters, merges the arc's touching pieces first, and ends exact."""
    import math

    from genbackbones.semantics.klish import klish

    rng = torch.Generator().manual_seed(0)
    t = torch.rand(3000, generator=rng) * math.radians(200)
    arc = torch.stack([torch.cos(t), torch.sin(t), 0.03 * torch.randn(3000, generator=rng)], 1)
    centre = torch.tensor([math.cos(math.radians(280)), math.sin(math.radians(280)), 0.0])
    blob = centre + 0.08 * torch.randn(800, 3, generator=rng)
    x = torch.nn.functional.normalize(torch.cat([arc, blob]), dim=1)
    truth = torch.cat([torch.zeros(3000), torch.ones(800)]).long()
    result = klish(x, None, KlishSettings(init_k=10), stop_k=2)
    level = result.levels[2]
    pred = (x @ level.weight.T + level.bias).argmax(1)
    assert max_matching_miou(cluster_confusion(pred, truth, 2, 2))[0] > 99
    _, km = kmeans(x, 2, 30, seed=0)
    assert max_matching_miou(cluster_confusion(km, truth, 2, 2))[0] < 80


def test_klish_merges_down_to_exactly_k_with_a_consistent_tree(tiny, tmp_path):
    settings = KlishSettings(init_k=12, resolution=16, max_pixels=3000, svm_evals=20)
    layers = one_per_resolution(tiny)
    run = cluster_generator(tiny, 4, 8, tmp_path / "cl", layers, settings, samples=3)
    result = run.result
    assert 2 <= result.kept_k <= 12
    assert sorted(result.levels) == list(range(2, result.kept_k + 1))  # one level per merge, down to 2
    assert len(result.merges) == result.kept_k - 2
    ids = result.levels[result.kept_k].ids
    for merge in result.merges:  # the tree: each merge removes the absorbed id and keeps the other
        assert merge.absorbed in ids and merge.into in ids and merge.absorbed != merge.into
        ids = [i for i in ids if i != merge.absorbed]
        assert result.levels[merge.k - 1].ids == ids
    for level in result.levels.values():
        assert level.weight.shape == (len(level.ids), sum(tiny.tap_specs()[n].channels for n in layers))
        assert level.agreement > 0.8  # the SVMs reproduce the merged clusters they were trained on
    ext = load_extractor(tmp_path / "cl" / "extractor")
    assert ext.config.kind == "klish" and len(ext.config.classes) == 4
    acts = generate(tiny, list(range(8)), layers).acts
    masks = ext.predict(acts)
    assert masks.shape == (8, 32, 32) and int(masks.max()) < 4 and len(masks.unique()) >= 2
    assert torch.equal(masks, result.extractor(4).predict(acts))
    record = json.loads((tmp_path / "cl" / "clusters.json").read_text())
    assert record["k"] == 4 and len(record["merges"]) == len(result.merges) and record["seeds"] == list(range(8))
    png = Image.open(tmp_path / "cl" / "merge_tree.png")
    rows = png.size[1] // 64
    assert png.size == (56 + 3 * 64, rows * 64) and 3 <= rows <= 9


def test_cluster_command(generator_source, tmp_path):
    out = tmp_path / "cl"
    args = ["cluster", generator_source, "--k", "3", "--n", "6", "--init-k", "10", "--resolution", "16",
            "--max-pixels", "2000", "--samples", "2", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"extractor", "merge_tree.png", "clusters.json"}
    one_line_error(runner.invoke(app, args), "already exists")
    one_line_error(runner.invoke(app, [*args[:-1], str(tmp_path / "o"), "--init-k", "2"]), "--init-k 2 must be")
    data = tmp_path / "data"
    result = runner.invoke(app, ["synthesize", generator_source, "--extractor", str(out), "--n", "3",
                                 "--out", str(data)])  # the cluster folder itself is accepted
    assert result.exit_code == 0, result.output
    assert all(np.asarray(Image.open(p)).max() < 3 for p in (data / "masks").iterdir())


# ----------------------------------------------------------------------------- synthesize


def test_synthesize_is_deterministic_and_resumes_to_identical_files(tiny, tmp_path, monkeypatch):
    ext = teacher(tiny, range(4))
    first = synthesize(tiny, ext, 10, tmp_path / "a", batch=4, progress=False)
    assert first.written == 10
    real_write = synth_module.write_pair
    calls = {"n": 0}

    def interrupted(*args):
        if calls["n"] == 5:
            raise KeyboardInterrupt
        calls["n"] += 1
        real_write(*args)

    monkeypatch.setattr(synth_module, "write_pair", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthesize(tiny, ext, 10, tmp_path / "b", batch=4, progress=False)
    monkeypatch.setattr(synth_module, "write_pair", real_write)
    partial = sorted(p.name for p in (tmp_path / "b" / "masks").iterdir())
    assert len(partial) == 5 and not list((tmp_path / "b").rglob(".tmp-*"))
    resumed = synthesize(tiny, ext, 10, tmp_path / "b", batch=4, fmt="datasets", progress=False)
    assert resumed.written == 5 and resumed.total == 10
    for sub in ("images", "masks"):
        a = {p.name: p.read_bytes() for p in (tmp_path / "a" / sub).iterdir()}
        b = {p.name: p.read_bytes() for p in (tmp_path / "b" / sub).iterdir()}
        assert a == b and len(a) == 10
    import datasets

    ds = datasets.load_from_disk(str(tmp_path / "b" / "dataset"))
    assert ds.num_rows == 10 and ds[3]["seed"] == 3
    assert np.array_equal(np.asarray(ds[3]["mask"]), np.asarray(Image.open(tmp_path / "a" / "masks" /
                                                                             "seed0000003.png")))
    again = synthesize(tiny, ext, 12, tmp_path / "b", batch=4, progress=False)  # extend N: only the new pairs
    assert again.written == 2
    other = teacher(tiny, range(4), seed=2)
    with pytest.raises(UserError, match="different extractor fingerprint"):
        synthesize(tiny, other, 10, tmp_path / "b", batch=4, progress=False)
    with pytest.raises(UserError, match="different batch size"):
        synthesize(tiny, ext, 10, tmp_path / "b", batch=3, progress=False)


def test_synthesize_command_errors_exit_2_with_one_line(tiny, tmp_path):
    folder = save_extractor(teacher(tiny, range(2)), tmp_path / "ext")
    base = ["synthesize", "random:tiny32", "--extractor", str(folder), "--n", "2"]
    one_line_error(runner.invoke(app, [*base, "--out", str(tmp_path / "o"), "--format", "zip"]),
                   "--format must be one of folder, datasets")
    one_line_error(runner.invoke(app, [*base[:3], str(tmp_path / "none"), "--n", "2", "--out", str(tmp_path / "o")]),
                   "does not exist")
    one_line_error(runner.invoke(app, ["synthesize", "random:small64", *base[2:], "--out", str(tmp_path / "o")]),
                   "trained for another generator")
    assert not (tmp_path / "o").exists()
