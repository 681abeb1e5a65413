"""Labelled-data loaders: every supported format, written by the tests themselves, and bad rows.

Also the guarantee the evaluator rests on: no test image is ever in a training subset.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genbackbones.errors import UserError
from genbackbones.evaluate.sources import load_data
from genbackbones.evaluate.data import (
    DataOptions,
    EvalData,
    check_disjoint,
    parse_class_colors,
    snap_colours,
    subset_positions,
)

COLOURS = np.array([[0, 0, 0], [220, 30, 60], [40, 120, 255]], dtype=np.uint8)  # background, lips, eyes
NAMES = ["background", "lips", "eyes"]


def class_mask(width: int, height: int, shift: int = 0) -> np.ndarray:
    """Top quarter background, then class 1 left of the middle and class 2 right of it."""
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4:, : width // 2 + shift] = 1
    mask[height // 4:, width // 2 + shift:] = 2
    return mask


def unique_image(mask: np.ndarray, i: int) -> np.ndarray:
    """Class colours, with a background shade unique to image i (no two test images are pixel-identical)."""
    rgb = COLOURS[mask].copy()
    rgb[mask == 0] = (5 * i, 0, 5 * i)
    return rgb


def write_segmentation_folder(root, mask_format: str = "index", count: int = 6, size=(48, 40)):
    """images/ in assorted modes (RGB, RGBA, greyscale, palette) + masks/ as index, palette or colour PNGs."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(count):
        mask = class_mask(*size, shift=i - count // 2)
        rgb = unique_image(mask, i)
        image = Image.fromarray(rgb).convert(("RGB", "RGBA", "L", "P")[i % 4])  # any mode is read as RGB
        image.save(root / "images" / f"img{i:02d}.png")
        if mask_format == "index":
            Image.fromarray(mask, mode="L").save(root / "masks" / f"img{i:02d}.png")
        elif mask_format == "palette":
            pal = Image.fromarray(mask, mode="P")
            pal.putpalette([255, 255, 255, 0, 255, 0, 255, 0, 255] + [0] * (256 - 3) * 3)  # colours are irrelevant
            pal.save(root / "masks" / f"img{i:02d}.png")
        else:
            Image.fromarray(COLOURS[mask]).save(root / "masks" / f"img{i:02d}.png")
    return root


def options(source, **kwargs) -> DataOptions:
    return DataOptions(source=str(source), resolution=kwargs.pop("resolution", 32), **kwargs)


def all_masks(data: EvalData) -> torch.Tensor:
    return torch.cat([data.train.masks, data.test.masks])


# ---------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------


def test_index_png_masks_with_rgba_and_greyscale_images(tmp_path):
    root = write_segmentation_folder(tmp_path / "seg")
    data = load_data(options(root, classes=tuple(NAMES)), "segmentation")
    assert len(data.train) + len(data.test) == 6 and len(data.test) >= 1
    assert data.train.images.shape[1:] == (3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.schema.classes == tuple(NAMES)
    masks = all_masks(data)
    assert masks.shape[1:] == (32, 32) and set(masks.unique().tolist()) == {0, 1, 2}
    # The mask got the image's crop and resize: an RGB image's colours agree with its mask away from edges.
    images = torch.cat([data.train.images, data.test.images])
    names = data.train.names + data.test.names
    i = names.index("img00.png")
    expected = COLOURS[masks[i].numpy()]
    inner = (slice(12, 30), slice(2, 30))
    agree = (np.abs(images[i].permute(1, 2, 0).numpy()[inner].astype(int) - expected[inner]).sum(-1) < 40).mean()
    assert agree > 0.9


def test_index_masks_without_class_names_are_numbered(tmp_path):
    data = load_data(options(write_segmentation_folder(tmp_path / "seg")), "segmentation")
    assert data.schema.classes == ("class_0", "class_1", "class_2")


def test_palette_png_uses_the_palette_index_as_class(tmp_path):
    index = load_data(options(write_segmentation_folder(tmp_path / "a"), classes=tuple(NAMES)), "segmentation")
    palette = load_data(options(write_segmentation_folder(tmp_path / "b", "palette"), classes=tuple(NAMES)),
                        "segmentation")
    assert torch.equal(all_masks(index), all_masks(palette))


@pytest.mark.parametrize("form", ["json", "yaml", "inline"])
def test_colour_coded_masks_with_a_colour_map(tmp_path, form):
    root = write_segmentation_folder(tmp_path / "c", "colour")
    spec = {name: "#" + "".join(f"{v:02x}" for v in c) for name, c in zip(NAMES, COLOURS)}
    if form == "json":
        (tmp_path / "colours.json").write_text(json.dumps({k: list(map(int, bytes.fromhex(v[1:])))
                                                           for k, v in spec.items()}))
        colours = str(tmp_path / "colours.json")
    elif form == "yaml":
        (tmp_path / "colours.yaml").write_text("".join(f"{k}: '{v}'\n" for k, v in spec.items()))
        colours = str(tmp_path / "colours.yaml")
    else:
        colours = ",".join(f"{k}={v}" for k, v in spec.items())
    data = load_data(options(root, class_colors=colours), "segmentation")
    index = load_data(options(write_segmentation_folder(tmp_path / "i"), classes=tuple(NAMES)), "segmentation")
    assert data.schema.classes == tuple(NAMES)
    assert torch.equal(all_masks(data), all_masks(index))


def test_anti_aliased_colours_snap_to_the_nearer_class():
    a, b, c = COLOURS[1].astype(float), COLOURS[2].astype(float), COLOURS[0].astype(float)
    rgb = np.zeros((4, 8, 3), np.uint8)
    rgb[:, :4] = a
    rgb[:, 4:] = b
    rgb[:, 3] = np.round(0.7 * a + 0.3 * b)  # edge pixels, mostly class 1
    rgb[:, 4] = np.round(0.3 * a + 0.7 * b)  # mostly class 2
    rgb[0, 0] = np.round((a + b + c) / 3)  # a corner where three parts meet: one odd pixel is tolerated
    classes = snap_colours(rgb, COLOURS.astype(float), "edge.png")
    assert classes[:, 3].tolist() == [1, 1, 1, 1] and classes[:, 4].tolist() == [2, 2, 2, 2]
    assert (classes[:, 5:] == 2).all() and (classes[1:, :3] == 1).all()


def test_unmapped_colour_names_the_file(tmp_path):
    root = write_segmentation_folder(tmp_path / "c", "colour")
    bad = np.asarray(Image.open(root / "masks" / "img03.png")).copy()
    bad[:8, :8] = [0, 255, 0]  # a green region: not a class colour, not a blend of two
    Image.fromarray(bad).save(root / "masks" / "img03.png")
    with pytest.raises(UserError, match=r"img03\.png.*#00ff00"):
        load_data(options(root, class_colors=",".join(f"{n}=#{bytes(c).hex()}" for n, c in zip(NAMES, COLOURS))),
                  "segmentation")


def test_colour_mask_without_a_colour_map_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"masks/img00\.png.*--class-colors"):
        load_data(options(write_segmentation_folder(tmp_path / "c", "colour")), "segmentation")


def test_bad_colour_map_entries(tmp_path):
    with pytest.raises(UserError, match="not #rrggbb"):
        parse_class_colors("skin=#12345")
    with pytest.raises(UserError, match="does not exist"):
        parse_class_colors(str(tmp_path / "missing.yaml"))


# ---------------------------------------------------------------------------
# Bad rows name the file
# ---------------------------------------------------------------------------


def test_unreadable_image_names_the_file(tmp_path):
    root = write_segmentation_folder(tmp_path / "seg")
    (root / "images" / "img02.png").write_bytes(b"this is not a png")
    with pytest.raises(UserError, match=r"img02\.png: cannot read image"):
        load_data(options(root), "segmentation")


def test_mask_size_mismatch_names_the_mask(tmp_path):
    root = write_segmentation_folder(tmp_path / "seg")
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="L").save(root / "masks" / "img04.png")
    with pytest.raises(UserError, match=r"masks/img04\.png: mask is 10x10 but its image"):
        load_data(options(root), "segmentation")


def test_missing_mask_and_out_of_range_class_name_the_file(tmp_path):
    root = write_segmentation_folder(tmp_path / "seg")
    (root / "masks" / "img01.png").unlink()
    with pytest.raises(UserError, match=r"img01\.png: no mask"):
        load_data(options(root), "segmentation")
    root = write_segmentation_folder(tmp_path / "seg2")
    with pytest.raises(UserError, match=r"class index 2 but only 2 classes"):
        load_data(options(root, classes=("background", "lips")), "segmentation")


# ---------------------------------------------------------------------------
# Landmarks
# ---------------------------------------------------------------------------


def write_landmark_folder(root, rows: dict[str, list[str]], size=(40, 30)):
    (root / "images").mkdir(parents=True)
    for i, name in enumerate(rows):
        Image.new("RGB", size, (100, 50, 10 * i)).save(root / "images" / name)
    header = "name,left_eye_x,left_eye_y,right_eye_x,right_eye_y,nose_x,nose_y\n"
    (root / "landmarks.csv").write_text(header + "".join(f"{n},{','.join(v)}\n" for n, v in rows.items()))
    return root


def test_landmarks_csv_is_cropped_and_scaled_with_the_image(tmp_path):
    rows = {f"f{i}.png": ["20", "10", "30", "10", "25", str(15 + i)] for i in range(5)}
    data = load_data(options(write_landmark_folder(tmp_path / "lm", rows), resolution=60), "landmarks")
    assert data.schema.landmark_names == ("left_eye", "right_eye", "nose")
    assert data.schema.mirror == (1, 0, 2) and data.schema.mirror_known
    # 40x30 -> centre crop x in [5, 35) -> x2 scale; pixel centres at integers: x' = (x - 5 + 0.5) * 2 - 0.5
    points = torch.cat([data.train.landmarks, data.test.landmarks])
    assert points.shape == (5, 3, 2)
    assert points[0, 0].tolist() == pytest.approx([(20 - 5 + 0.5) * 2 - 0.5, (10 + 0.5) * 2 - 0.5])


def test_missing_landmark_names_the_image(tmp_path):
    rows = {f"f{i}.png": ["20", "10", "30", "10", "25", "15"] for i in range(4)}
    rows["f2.png"] = ["20", "10", "", "10", "25", "15"]
    with pytest.raises(UserError, match=r"f2\.png: missing or non-numeric landmark"):
        load_data(options(write_landmark_folder(tmp_path / "lm", rows)), "landmarks")
    good = {f"f{i}.png": ["20", "10", "30", "10", "25", "15"] for i in range(4)}
    root = write_landmark_folder(tmp_path / "lm2", good)
    Image.new("RGB", (40, 30)).save(root / "images" / "extra.png")
    with pytest.raises(UserError, match=r"extra\.png: no row in .*landmarks\.csv"):
        load_data(options(root), "landmarks")


def test_landmark_columns_select_points_and_eye_indices_are_checked(tmp_path):
    rows = {f"f{i}.png": ["20", "10", "30", "10", "25", "15"] for i in range(4)}
    root = write_landmark_folder(tmp_path / "lm", rows)
    picked = ("nose_x", "nose_y", "left_eye_x", "left_eye_y")
    with pytest.raises(UserError, match=r"2 landmarks are not a known layout.*give --eye-indices"):
        load_data(options(root, landmark_columns=picked), "landmarks")  # no eye pair, no known count
    data = load_data(options(root, landmark_columns=picked, eye_indices=(0, 1)), "landmarks")
    assert data.schema.landmark_names == ("nose", "left_eye") and data.schema.eye_indices == (0, 1)
    assert data.schema.normalisation["rule"] == "--eye-indices"
    with pytest.raises(UserError, match="--eye-indices 0,5"):
        load_data(options(root, eye_indices=(0, 5)), "landmarks")


# ---------------------------------------------------------------------------
# Classification labels: folders, file-name patterns, labels.csv
# ---------------------------------------------------------------------------


def test_classes_from_folder_names(tmp_path):
    for cls, colour in (("cat", (200, 0, 0)), ("dog", (0, 0, 200))):
        (tmp_path / "pets" / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (20 + i, 24), (colour[0], 10 * i, colour[2])).save(tmp_path / "pets" / cls / f"{i}.png")
    data = load_data(options(tmp_path / "pets"), "classification")
    assert data.schema.classes == ("cat", "dog") and data.schema.target == "class"
    labels = torch.cat([data.train.labels, data.test.labels])
    names = data.train.names + data.test.names
    assert all(("dog" in n) == bool(lbl) for n, lbl in zip(names, labels.tolist()))


def test_labels_from_a_file_name_pattern(tmp_path):
    folder = tmp_path / "utk"
    folder.mkdir()
    for i, (age, gender) in enumerate([(25, 0), (31, 1), (8, 0), (60, 1), (44, 0), (19, 1)]):
        Image.new("L", (30, 30), 40 * i).save(folder / f"{age}_{gender}_0_2017{i:04d}.jpg.png")
    pattern = r"(?P<age>\d+)_(?P<gender>\d)_"
    data = load_data(options(folder, label_pattern=pattern, target="gender"), "classification")
    assert data.schema.classes == ("0", "1")
    names = data.train.names + data.test.names
    labels = torch.cat([data.train.labels, data.test.labels]).tolist()
    assert all(int(n.split("_")[1]) == lbl for n, lbl in zip(names, labels))
    ages = load_data(options(folder, label_pattern=pattern), "classification")  # default: the first group
    assert ages.schema.classes == ("8", "19", "25", "31", "44", "60") and ages.schema.target == "age"
    Image.new("L", (30, 30)).save(folder / "unlabelled.png")
    with pytest.raises(UserError, match=r"unlabelled\.png: file name does not match"):
        load_data(options(folder, label_pattern=pattern), "classification")


def test_labels_csv_with_string_labels_and_an_unknown_target(tmp_path):
    root = tmp_path / "lab"
    (root / "images").mkdir(parents=True)
    lines = ["file,colour,size"]
    for i in range(6):
        Image.new("RGB", (16, 16), (i * 30, 0, 0)).save(root / "images" / f"{i}.png")
        lines.append(f"{i}.png,{'red' if i % 2 else 'blue'},{i}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    data = load_data(options(root, resolution=16, target="colour"), "classification")
    assert data.schema.target == "colour" and data.schema.classes == ("blue", "red")
    with pytest.raises(UserError, match=r"labels\.csv has 2 label columns \(colour, size\); choose one with --target"):
        load_data(options(root, resolution=16), "classification")
    with pytest.raises(UserError, match="no label column 'shape'"):
        load_data(options(root, resolution=16, target="shape"), "classification")


# ---------------------------------------------------------------------------
# `datasets` datasets saved with save_to_disk
# ---------------------------------------------------------------------------


def make_dataset(n: int, offset: int = 0):
    import datasets

    features = datasets.Features({
        "image": datasets.Image(), "mask": datasets.Image(),
        "landmarks": datasets.Array2D(shape=(3, 2), dtype="float32"),
        "label": datasets.ClassLabel(names=["no", "yes"]),
    })
    rows = {"image": [], "mask": [], "landmarks": [], "label": []}
    for i in range(n):
        mask = class_mask(40, 40, shift=(i + offset) % 5 - 2)
        rows["image"].append(Image.fromarray(unique_image(mask, i + 10 * offset)).convert("RGBA" if i % 2 else "RGB"))
        rows["mask"].append(Image.fromarray(mask, mode="L"))
        rows["landmarks"].append(np.array([[10, 10], [30, 10], [20, 20 + i % 3]], np.float32))
        rows["label"].append((i + offset) % 2)
    return datasets.Dataset.from_dict(rows, features=features)


def test_saved_dataset_for_every_task(tmp_path):
    make_dataset(10).save_to_disk(str(tmp_path / "ds"))
    seg = load_data(options(tmp_path / "ds", classes=tuple(NAMES)), "segmentation")
    assert len(seg.train) + len(seg.test) == 10 and set(all_masks(seg).unique().tolist()) == {0, 1, 2}
    with pytest.raises(UserError, match="3 landmarks without names are not a known layout"):
        load_data(options(tmp_path / "ds", resolution=40), "landmarks")
    lm = load_data(options(tmp_path / "ds", resolution=40, eye_indices=(0, 1)), "landmarks")
    assert lm.schema.landmark_names == ("p0", "p1", "p2") and not lm.schema.mirror_known
    assert any("flips are off" in note for note in lm.notes)
    assert lm.train.landmarks[0, 0].tolist() == pytest.approx([10.0, 10.0])
    cls = load_data(options(tmp_path / "ds"), "classification")
    assert cls.schema.classes == ("no", "yes") and cls.schema.target == "label"
    with pytest.raises(UserError, match="no column 'segmentation'"):
        load_data(options(tmp_path / "ds", mask_column="segmentation"), "segmentation")


def test_dataset_dict_keeps_its_test_split(tmp_path):
    import datasets

    datasets.DatasetDict({"train": make_dataset(6), "test": make_dataset(3, offset=1)}).save_to_disk(
        str(tmp_path / "dd"))
    data = load_data(options(tmp_path / "dd"), "classification")
    assert len(data.train) == 6 and len(data.test) == 3
    assert all("[train]" in n for n in data.train.names) and all("[test]" in n for n in data.test.names)
    assert "dataset's 'train' and 'test' splits" in data.description["split"]


# ---------------------------------------------------------------------------
# Train / test separation
# ---------------------------------------------------------------------------


def test_faces_train_pool_and_test_set_are_disjoint_index_ranges():
    data = load_data(DataOptions(resolution=32, pool=50, test_size=20), "segmentation")
    assert len(data.train) == 50 and len(data.test) == 20
    assert not set(data.train.names) & set(data.test.names)
    assert all(int(n.split("/")[1]) >= 1_000_000 for n in data.test.names)  # the domain's test range
    assert all(int(n.split("/")[1]) < 50 for n in data.train.names)


@pytest.mark.parametrize("source", ["faces", "folder", "dataset"])
def test_no_test_image_is_ever_in_a_training_subset(tmp_path, source):
    if source == "faces":
        data = load_data(DataOptions(resolution=32, pool=40, test_size=10), "segmentation")
    elif source == "folder":
        data = load_data(options(write_segmentation_folder(tmp_path / "f", count=20)), "segmentation")
    else:
        make_dataset(20).save_to_disk(str(tmp_path / "ds"))
        data = load_data(options(tmp_path / "ds"), "segmentation")
    test_names = set(data.test.names)
    assert test_names and not test_names & set(data.train.names)
    pool = len(data.train)
    subsets = {(n, s): subset_positions(pool, n, s) for n in (2, 4, pool) for s in range(3)}
    check_disjoint(data, subsets)  # the evaluator's own guard passes
    for (n, s), positions in subsets.items():
        assert len(set(positions)) == n and all(0 <= p < pool for p in positions)
        assert not {data.train.names[p] for p in positions} & test_names
        if n == 2:
            assert set(positions) <= set(subsets[(4, s)])  # nested in N for a seed
    assert subsets[(4, 0)] != subsets[(4, 1)]  # seeds draw different subsets


def test_the_guard_catches_a_test_image_in_a_training_subset(tmp_path):
    data = load_data(options(write_segmentation_folder(tmp_path / "f", count=10)), "segmentation")
    data.train.names[0] = data.test.names[0]  # simulate a broken split
    with pytest.raises(RuntimeError, match="contains test images"):
        check_disjoint(data, {(1, 0): [0]})


def test_identical_test_images_are_dropped(tmp_path):
    root = write_segmentation_folder(tmp_path / "f", count=12)
    for i in range(6, 12):  # image i + 6 is a copy of image i: some copies end up on both sides of the split
        Image.open(root / "images" / f"img{i - 6:02d}.png").save(root / "images" / f"img{i:02d}.png")
    data = load_data(options(root, test_fraction=0.5), "segmentation")
    assert data.description["test_duplicates_dropped"] >= 1
    train_pixels = {bytes(t.numpy().tobytes()) for t in data.train.images}
    assert not any(bytes(t.numpy().tobytes()) in train_pixels for t in data.test.images)


def test_train_and_test_sub_folders_are_kept(tmp_path):
    write_segmentation_folder(tmp_path / "tt" / "train", count=4)
    write_segmentation_folder(tmp_path / "tt" / "test", count=3, size=(40, 40))
    data = load_data(options(tmp_path / "tt"), "segmentation")
    assert (len(data.train), len(data.test)) == (4, 3)


# ---------------------------------------------------------------------------
# Issue 15: right by default on real labelled data (public layouts)
# ---------------------------------------------------------------------------


def face68(cx: float, cy: float, s: float) -> np.ndarray:
    """A left/right-symmetric 68-point face laid out as iBUG 300-W numbers its points (0-based).

    Built from the layout's description, independently of the evaluator's pair table: jaw 0-16 from
    image-left to image-right, brows 17-21 / 22-26, nose bridge 27-30, nostrils 31-35, eyes 36-41 / 42-47
    clockwise from the outer / inner corner, outer lips 48-59 and inner lips 60-67 clockwise from the
    left corner. Mirror partners sit at reflected x and the same y.
    """
    t = np.linspace(-1, 1, 17)
    jaw = np.stack([cx + s * t, cy + 0.8 * s * (1 - t * t)], 1)
    brows = [(cx + d * s, cy - 0.5 * s) for d in (-0.8, -0.65, -0.5, -0.35, -0.2, 0.2, 0.35, 0.5, 0.65, 0.8)]
    bridge = [(cx, cy - 0.3 * s + 0.1 * i * s) for i in range(4)]
    nostrils = [(cx + d * s, cy + 0.2 * s) for d in (-0.2, -0.1, 0.0, 0.1, 0.2)]
    top, bottom, mid = cy - 0.35 * s, cy - 0.25 * s, cy - 0.3 * s
    left_eye = [(-0.6, mid), (-0.5, top), (-0.35, top), (-0.25, mid), (-0.35, bottom), (-0.5, bottom)]
    right_eye = [(0.25, mid), (0.35, top), (0.5, top), (0.6, mid), (0.5, bottom), (0.35, bottom)]
    eyes = [(cx + d * s, y) for d, y in left_eye + right_eye]
    up, down, corner = cy + 0.4 * s, cy + 0.6 * s, cy + 0.5 * s
    outer = [(-0.4, corner), (-0.25, up), (-0.1, up), (0.0, up), (0.1, up), (0.25, up), (0.4, corner),
             (0.25, down), (0.1, down), (0.0, down), (-0.1, down), (-0.25, down)]
    inner = [(-0.3, corner), (-0.1, up + 0.03 * s), (0.0, up + 0.03 * s), (0.1, up + 0.03 * s), (0.3, corner),
             (0.1, down - 0.03 * s), (0.0, down - 0.03 * s), (-0.1, down - 0.03 * s)]
    lips = [(cx + d * s, y) for d, y in outer + inner]
    points = np.concatenate([jaw, np.array(brows + bridge + nostrils + eyes + lips)])
    assert points.shape == (68, 2)
    return points


def write_numbered_landmark_csv(root, count: int = 8, size: int = 64) -> Path:
    """images/ + landmarks.csv with the header `,0,1,...,135` (a pandas export of [68, 2] arrays)."""
    (root / "images").mkdir(parents=True)
    lines = ["," + ",".join(str(i) for i in range(136))]
    for i in range(count):
        Image.new("RGB", (size, size), (20 * i, 90, 40)).save(root / "images" / f"face{i}.png")
        points = face68((size - 1) / 2, (size - 1) / 2 + i % 3 - 1, 20 + i)
        lines.append(f"face{i}.png," + ",".join(f"{v:.3f}" for v in points.reshape(-1)))
    (root / "landmarks.csv").write_text("\n".join(lines) + "\n")
    return root


def test_68_point_csv_with_numbered_columns_gets_outer_eye_corners_and_correct_flips(tmp_path):
    from genbackbones.evaluate.tasks import Batches, LandmarkSettings

    data = load_data(options(write_numbered_landmark_csv(tmp_path / "lm68"), resolution=64), "landmarks")
    assert data.schema.eye_indices == (36, 45)  # iBUG 300-W: outer eye corners, not points 0 and 1
    assert data.schema.mirror_known  # numbered columns of a known layout flip safely
    mirror = data.schema.mirror
    assert (mirror[0], mirror[16], mirror[36], mirror[39], mirror[48], mirror[61], mirror[30]) == \
        (16, 0, 45, 42, 54, 63, 30)
    # NME divides by the outer-eye-corner distance: a 1 px error on every point of a face of scale s
    pts = torch.cat([data.train.landmarks, data.test.landmarks])
    iod = (pts[:, 36] - pts[:, 45]).norm(dim=-1)
    from genbackbones.evaluate.metrics import nme

    shifted = pts.clone()
    shifted[..., 0] += 1.0
    assert nme(shifted, pts, data.schema.eye_indices) == pytest.approx(float((100 / iod).mean()), rel=1e-5)
    # a horizontal flip of a symmetric face gives back the same face, and each point stays on its side
    batch = data.train.take(range(len(data.train)))
    before = batch.landmarks.clone()
    flipped = Batches(batch, data.schema, LandmarkSettings(), 0, "cpu", True)._flip(
        batch, torch.ones(len(batch), dtype=torch.bool))
    assert torch.allclose(flipped.landmarks, before, atol=1e-3)
    assert (flipped.landmarks[:, 36, 0] < flipped.landmarks[:, 45, 0]).all()
    assert (flipped.landmarks[:, 0, 0] < flipped.landmarks[:, 16, 0]).all()


CELEBAMASK_CLASSES = ["background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear",
                      "r_ear", "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth"]


def write_celebamask_like(root, count: int = 6, size: int = 48, classes_file: str | None = "classes.txt"):
    """images/ + masks/ as 19-class palette PNGs (CelebAMask-HQ's class order), l_eye on the image left."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    ids = {name: i for i, name in enumerate(CELEBAMASK_CLASSES)}
    palette = np.random.default_rng(0).integers(0, 255, (256, 3), dtype=np.uint8)
    for i in range(count):
        mask = np.full((size, size), ids["skin"], np.uint8)
        mask[:6] = ids["hair"]
        mask[14:20, 8:18] = ids["l_eye"]
        mask[14:20, 30:40] = ids["r_eye"]
        mask[8:11, 8:18] = ids["l_brow"]
        mask[8:11, 30:40] = ids["r_brow"]
        mask[34:38, 14:34] = ids["u_lip"]
        mask[38:42, 14:34] = ids["l_lip"]
        mask[44:, :] = ids["neck"]
        mask[44:, 20 + i:24 + i] = ids["neck_l"]
        pal = Image.fromarray(mask, mode="P")
        pal.putpalette(palette.reshape(-1).tolist())
        pal.save(root / "masks" / f"{i:05d}.png")
        Image.fromarray(palette[mask] // 2 + 10 * i).save(root / "images" / f"{i:05d}.jpg")
    if classes_file == "classes.txt":
        (root / "classes.txt").write_text("\n".join(CELEBAMASK_CLASSES) + "\n")
    elif classes_file == "classes.json":
        (root / "classes.json").write_text(json.dumps(CELEBAMASK_CLASSES))
    return root


@pytest.mark.parametrize("classes_file", ["classes.txt", "classes.json"])
def test_celebamask_palette_masks_with_classes_file_keep_l_eye_on_the_left_after_a_flip(tmp_path, classes_file):
    from genbackbones.evaluate.tasks import Batches, SegmentationSettings

    data = load_data(options(write_celebamask_like(tmp_path / "cm", classes_file=classes_file), resolution=48),
                     "segmentation")
    assert data.schema.classes == tuple(CELEBAMASK_CLASSES)
    assert data.schema.mirror_known
    l_eye, r_eye = CELEBAMASK_CLASSES.index("l_eye"), CELEBAMASK_CLASSES.index("r_eye")
    mirror = data.schema.mirror
    assert mirror[l_eye] == r_eye and mirror[CELEBAMASK_CLASSES.index("l_brow")] == CELEBAMASK_CLASSES.index("r_brow")
    for unpaired in ("l_lip", "u_lip", "ear_r", "neck_l", "eye_g"):  # lower lip, earring, necklace: no side
        assert mirror[CELEBAMASK_CLASSES.index(unpaired)] == CELEBAMASK_CLASSES.index(unpaired)
    batch = data.train.take(range(len(data.train)))
    flipped = Batches(batch, data.schema, SegmentationSettings(), 0, "cpu", True)._flip(
        batch, torch.ones(len(batch), dtype=torch.bool))
    xs = torch.arange(48).expand(48, 48)
    for m in flipped.masks:
        assert (xs[m == l_eye] < 24).all() and (xs[m == r_eye] >= 24).all()
        assert (m == l_eye).sum() > 0


def write_five_class_masks(root: Path, n: int) -> Path:
    """N 32 px image/mask pairs in ROOT/images and ROOT/masks: index masks with 5 classes and no class names."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = np.zeros((32, 32), np.uint8)
        mask[8:16, 4:12], mask[8:16, 20:28], mask[20:24, 8:24], mask[26:, :] = 1, 2, 3, 4
        Image.fromarray(mask, mode="L").save(root / "masks" / f"{i}.png")
        Image.fromarray((mask * 50 + i).astype(np.uint8)).convert("RGB").save(root / "images" / f"{i}.png")
    return root


def test_unnamed_masks_with_five_classes_turn_flips_off_and_say_why(tmp_path):
    root = write_five_class_masks(tmp_path / "five", 6)
    data = load_data(options(root), "segmentation")
    assert data.schema.classes == tuple(f"class_{i}" for i in range(5))
    assert not data.schema.mirror_known
    assert any("flip" in note and "classes.txt" in note for note in data.notes)
    three = load_data(options(write_segmentation_folder(tmp_path / "three", count=6)), "segmentation")
    assert len(three.schema.classes) == 3 and not three.schema.mirror_known
    # background + one unnamed part cannot be side-specific: flips stay on
    binary = tmp_path / "binary"
    (binary / "images").mkdir(parents=True)
    (binary / "masks").mkdir()
    for i in range(4):
        mask = np.zeros((32, 32), np.uint8)
        mask[10:20, 5:15] = 1
        Image.fromarray(mask, mode="L").save(binary / "masks" / f"{i}.png")
        Image.new("RGB", (32, 32), (i, 0, 0)).save(binary / "images" / f"{i}.png")
    assert load_data(options(binary), "segmentation").schema.mirror_known


def test_an_unrecognised_layout_names_the_accepted_layouts(tmp_path):
    root = tmp_path / "odd"
    (root / "pictures_v2").mkdir(parents=True)
    (root / "ann_v2").mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16)).save(root / "pictures_v2" / f"{i}.png")
        Image.new("L", (16, 16)).save(root / "ann_v2" / f"{i}.png")
    with pytest.raises(UserError) as err:
        load_data(options(root), "segmentation")
    message = str(err.value)
    assert "\n" not in message
    assert "images/ + masks/" in message and "train/ + test/" in message
    assert "JPEGImages/ + SegmentationClass/" in message
    with pytest.raises(UserError, match=r"landmarks\.csv.*\.pts"):
        load_data(options(root), "landmarks")
