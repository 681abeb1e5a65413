"""Public layouts of labelled faces, landmark conventions, class files and `datasets` sources (issue 15).

Every data set here is written by the test itself in the layout it stands for; nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genbackbones.errors import UserError
from genbackbones.evaluate.data import DataOptions
from genbackbones.evaluate.sources import load_data
from genbackbones.evaluate.landmarks import CONVENTIONS, resolve_layout

from .test_evaluate_data import CELEBAMASK_CLASSES, face68, options, write_celebamask_like

SHA = "0123456789abcdef0123456789abcdef01234567"


# ---------------------------------------------------------------------------
# Landmark conventions
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("points", sorted(CONVENTIONS))
def test_every_convention_is_a_mirror_that_swaps_its_normalising_points(points):
    convention = CONVENTIONS[points]
    mirror = convention.mirror()
    assert len(mirror) == points and sorted(mirror) == list(range(points))
    assert all(mirror[mirror[i]] == i for i in range(points))  # an involution: flipping twice is the identity
    paired = [i for pair in convention.pairs for i in pair]
    assert len(paired) == len(set(paired))  # no point in two pairs
    i, j = convention.normaliser
    assert mirror[i] == j  # the normalising points are a left/right pair (eyes)


def test_98_point_wflw_and_5_point_layouts():
    wflw = resolve_layout([f"p{i}" for i in range(98)], None, "wflw")
    assert wflw.eye_indices == (60, 72) and wflw.flip
    assert (wflw.mirror[0], wflw.mirror[96], wflw.mirror[76], wflw.mirror[54]) == (32, 97, 82, 54)
    five = resolve_layout([str(i) for i in range(5)], None, "five")
    assert five.eye_indices == (0, 1) and five.mirror == (1, 0, 2, 4, 3)
    assert five.normalisation["rule"].startswith("5-point")


def test_names_beat_the_point_count_and_explicit_indices_beat_both():
    names = ["nose", "right_eye", "left_eye", "mouth_right", "mouth_left"]  # 5 points, not in the 5-point order
    layout = resolve_layout(names, None, "named")
    assert layout.eye_indices == (1, 2) and layout.mirror == (0, 2, 1, 4, 3)
    assert resolve_layout(names, (3, 4), "named").normalisation["rule"] == "--eye-indices"
    corners = ["left_eye_outer", "left_eye_inner", "right_eye_inner", "right_eye_outer", "left_brow", "right_brow"]
    assert resolve_layout(corners, None, "corners").eye_indices == (0, 3)  # several eye pairs: the outer corners


def test_unknown_counts_need_eye_indices():
    with pytest.raises(UserError, match=r"7 landmarks without names are not a known layout.*--eye-indices"):
        resolve_layout([f"p{i}" for i in range(7)], None, "seven")
    with pytest.raises(UserError, match="19 landmarks .AFLW. are normalised by face box size"):
        resolve_layout([f"p{i}" for i in range(19)], None, "aflw")
    layout = resolve_layout([f"p{i}" for i in range(7)], (2, 5), "seven")
    assert not layout.flip and "flips are off" in layout.notes[0]
    with pytest.raises(UserError, match="do not name two different points"):
        resolve_layout([f"p{i}" for i in range(7)], (2, 7), "seven")


# ---------------------------------------------------------------------------
# Landmark layouts: .pts (iBUG 300-W), LaPa .txt, keypoints.csv; points outside the crop
# ---------------------------------------------------------------------------


def _faces68(root: Path, count: int, size=(64, 64), folder="images", shade: int = 0) -> list[np.ndarray]:
    (root / folder).mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        Image.new("RGB", size, (30 * i, 60 + shade, 90)).save(root / folder / f"img_{i}.jpg")
        out.append(face68((size[0] - 1) / 2, (size[1] - 1) / 2, 18 + i))
    return out


def test_ibug_pts_files_beside_the_images(tmp_path):
    root = tmp_path / "300w"
    faces = _faces68(root, 5)
    for i, points in enumerate(faces):
        body = "\n".join(f"{x:.3f} {y:.3f}" for x, y in points)
        (root / "images" / f"img_{i}.pts").write_text(f"version: 1\nn_points:  68\n{{\n{body}\n}}\n")
    data = load_data(options(root, resolution=64), "landmarks")
    assert data.schema.eye_indices == (36, 45) and data.schema.mirror_known
    assert data.description["landmarks_outside_crop"]["points"] == 0
    every = torch.cat([data.train.landmarks, data.test.landmarks])
    names = data.train.names + data.test.names
    i = names.index("img_2.jpg")
    assert every[i].numpy() == pytest.approx(faces[2], abs=1e-3)  # 64x64 at 64 px: coordinates unchanged


def test_lapa_layout_images_labels_landmarks(tmp_path):
    """LaPa: train/ and test/, each with images/, labels/ (index masks) and landmarks/<stem>.txt."""
    for split, count in (("train", 4), ("test", 2)):
        faces = _faces68(tmp_path / "lapa" / split, count, shade=100 * (split == "test"))
        (tmp_path / "lapa" / split / "labels").mkdir()
        (tmp_path / "lapa" / split / "landmarks").mkdir()
        for i, points in enumerate(faces):
            mask = np.zeros((64, 64), np.uint8)
            mask[20:40, 10:30], mask[20:40, 34:54] = 1, 2
            Image.fromarray(mask, mode="L").save(tmp_path / "lapa" / split / "labels" / f"img_{i}.png")
            lines = [str(len(points))] + [f"{x:.2f} {y:.2f}" for x, y in points]
            (tmp_path / "lapa" / split / "landmarks" / f"img_{i}.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "lapa" / "classes.txt").write_text("0 background\n1 left_eye\n2 right_eye\n")
    seg = load_data(options(tmp_path / "lapa", resolution=32), "segmentation")
    assert (len(seg.train), len(seg.test)) == (4, 2)
    assert seg.schema.classes == ("background", "left_eye", "right_eye") and seg.schema.mirror == (0, 2, 1)
    assert seg.description["classes_source"].endswith("classes.txt")
    lm = load_data(options(tmp_path / "lapa", resolution=32), "landmarks")
    assert lm.schema.eye_indices == (36, 45) and lm.train.landmarks.shape == (4, 68, 2)


def test_keypoints_csv_beside_an_image_folder_and_points_outside_the_crop(tmp_path):
    root = tmp_path / "kp"
    faces = _faces68(root, 10, size=(96, 64))  # landscape: the centred square crop drops 16 px on each side
    faces[3][0] = (2.0, 30.0)  # a jaw point in the cropped-away margin
    # columns x0..x67 then y0..y67 (not interleaved): read as 68 (x, y) pairs all the same
    lines = ["image_id," + ",".join(f"{c}{i}" for c in "xy" for i in range(68))]
    lines += [f"img_{i}.jpg," + ",".join(f"{v:.3f}" for v in p.T.reshape(-1)) for i, p in enumerate(faces)]
    (root / "keypoints.csv").write_text("\n".join(lines) + "\n")
    data = load_data(options(root, resolution=64), "landmarks")
    assert data.schema.eye_indices == (36, 45) and data.schema.mirror_known
    every = torch.cat([data.train.landmarks, data.test.landmarks])
    i = (data.train.names + data.test.names).index("img_5.jpg")
    assert every[i].numpy() == pytest.approx(faces[5] - [16, 0], abs=1e-3)  # the crop's 16 px left margin
    assert data.description["landmarks_outside_crop"] == {"points": 1, "of": 680, "images": 1, "worst": "img_3.jpg"}
    assert any("1 of 680 landmarks fall outside" in note for note in data.notes)
    with pytest.raises(UserError, match=r"1 of 680 landmarks .0.1 %. fall outside.*img_3\.jpg.*data\.max_outside"):
        load_data(options(root, resolution=64, max_outside=0.001), "landmarks")


# ---------------------------------------------------------------------------
# Segmentation layouts and class files
# ---------------------------------------------------------------------------


def test_pascal_voc_layout_uses_the_images_that_have_masks(tmp_path):
    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    for i in range(8):
        Image.new("RGB", (40, 30), (20 * i, 0, 0)).save(root / "JPEGImages" / f"2007_{i:06d}.jpg")
        if i < 6:
            mask = np.zeros((30, 40), np.uint8)
            mask[5:25, 5 + i:20 + i] = 1
            mask[0, :] = 255  # VOC's void border
            pal = Image.fromarray(mask, mode="P")
            pal.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
            pal.save(root / "SegmentationClass" / f"2007_{i:06d}.png")
    data = load_data(options(root), "segmentation")
    assert len(data.train) + len(data.test) == 6
    assert any("2 images of JPEGImages/ have no mask" in note for note in data.notes)
    assert data.schema.classes == ("class_0", "class_1") and data.schema.mirror_known  # 2 classes: flip is safe


@pytest.mark.parametrize("content, expected", [
    ("background\nskin\nl_eye\nr_eye\n", ("background", "skin", "l_eye", "r_eye")),
    ("0: background\n1: skin\n3: r_eye\n2: l_eye\n", ("background", "skin", "l_eye", "r_eye")),
    ("background, skin,l_eye ,r_eye\n", ("background", "skin", "l_eye", "r_eye")),  # as --classes takes them
])
def test_classes_txt_plain_or_numbered(tmp_path, content, expected):
    root = tmp_path / "c"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(4):
        mask = np.ones((24, 24), np.uint8)
        mask[:4], mask[8:14, 2:10], mask[8:14, 14:22] = 0, 2, 3
        Image.fromarray(mask, mode="L").save(root / "masks" / f"{i}.png")
        Image.fromarray(mask * 60 + i).convert("RGB").save(root / "images" / f"{i}.png")
    (root / "masks" / "classes.txt").write_text(content)  # beside the masks counts too
    data = load_data(options(root), "segmentation")
    assert data.schema.classes == expected and data.schema.mirror == (0, 1, 3, 2) and data.schema.mirror_known
    (root / "masks" / "classes.txt").write_text("background\nskin\n")
    with pytest.raises(UserError, match=r"class index 3 but only 2 classes are named"):
        load_data(options(root), "segmentation")


def test_id2label_json_and_a_colour_map_json_beside_the_masks(tmp_path):
    root = write_celebamask_like(tmp_path / "h", classes_file=None)
    (root / "id2label.json").write_text(json.dumps({str(i): n for i, n in enumerate(CELEBAMASK_CLASSES)}))
    data = load_data(options(root), "segmentation")
    assert data.schema.classes == tuple(CELEBAMASK_CLASSES) and data.description["classes_source"].endswith(
        "id2label.json")
    assert load_data(options(root, classes=tuple(f"c{i}" for i in range(19))), "segmentation").schema.classes[0] == "c0"
    colour = tmp_path / "colour"
    (colour / "images").mkdir(parents=True)
    (colour / "masks").mkdir()
    palette = {"background": [0, 0, 0], "l_eye": [255, 0, 0], "r_eye": [0, 0, 255]}
    for i in range(4):
        rgb = np.zeros((32, 32, 3), np.uint8)
        rgb[10:20, 2:12], rgb[10:20, 20:30] = palette["l_eye"], palette["r_eye"]
        Image.fromarray(rgb).save(colour / "masks" / f"{i}.png")
        Image.fromarray(rgb // 2 + i).save(colour / "images" / f"{i}.png")
    (colour / "classes.json").write_text(json.dumps(palette))
    data = load_data(options(colour), "segmentation")
    assert data.schema.classes == ("background", "l_eye", "r_eye") and data.schema.mirror == (0, 2, 1)
    assert set(torch.cat([data.train.masks, data.test.masks]).unique().tolist()) == {0, 1, 2}


# ---------------------------------------------------------------------------
# Classification: the `datasets` imagefolder metadata.csv / metadata.jsonl layout
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_imagefolder_metadata_file(tmp_path, kind):
    root = tmp_path / "meta"
    root.mkdir()
    records = []
    for i in range(6):
        Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(root / f"{i:04d}.png")
        records.append({"file_name": f"{i:04d}.png", "smiling": "yes" if i % 2 else "no"})
    if kind == "csv":
        (root / "metadata.csv").write_text("file_name,smiling\n" + "".join(
            f"{r['file_name']},{r['smiling']}\n" for r in records))
    else:
        (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    data = load_data(options(root, resolution=16), "classification")
    assert data.schema.target == "smiling" and data.schema.classes == ("no", "yes")
    labels = torch.cat([data.train.labels, data.test.labels]).tolist()
    names = data.train.names + data.test.names
    assert all(lbl == int(n[:4]) % 2 for n, lbl in zip(names, labels))


def test_a_folder_without_labels_names_the_layouts(tmp_path):
    root = tmp_path / "bare"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(root / "images" / "a.png")
    with pytest.raises(UserError, match=r"no labels\.csv.*accepted layouts for classification: <class>/<image>"):
        load_data(options(root), "classification")
    with pytest.raises(UserError, match=r"images in images/ but no mask folder.*JPEGImages/"):
        load_data(options(root), "segmentation")


# ---------------------------------------------------------------------------
# `datasets`: a Hub id from the local cache, splits, revisions, builders, decoding a chunk at a time
# ---------------------------------------------------------------------------


def hub_cached_dataset(home: Path, repo_id: str, splits: dict, sha: str = SHA, config: str = "default") -> None:
    """Write `datasets`' cache of a Hub dataset as `load_dataset(repo_id)` leaves it after an online load:
    HF_DATASETS_CACHE/<org>___<name>/<config>/0.0.0/<commit>/ with the arrow files and dataset_info.json."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    src = home / "parquet-src"
    src.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, ds in splits.items():
        files[split] = str(src / f"{split}.parquet")
        ds.to_parquet(files[split])
    name = repo_id.split("/")[-1]
    builder = Parquet(cache_dir=str(home / "build"), dataset_name=name, hash=sha, config_name=config,
                      data_files=files, features=next(iter(splits.values())).features)
    builder.download_and_prepare()
    dest = home / "datasets" / repo_id.replace("/", "___") / config / "0.0.0" / sha
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(builder.cache_dir, dest)


@pytest.fixture
def offline_datasets(tmp_path, monkeypatch):
    """`datasets` reading only the test's own cache, offline."""
    import datasets

    home = tmp_path / "hf"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return home


def labelled_faces(n: int, offset: int = 0):
    """A small face-like `datasets.Dataset`: image, mask (with a ClassLabel-free Image feature), 5 landmarks, label."""
    import datasets

    rows = {"image": [], "mask": [], "landmarks": [], "smiling": []}
    for i in range(n):
        mask = np.zeros((40, 40), np.uint8)
        mask[10:20, 4:16], mask[10:20, 24:36] = 1, 2
        image = np.zeros((40, 40, 3), np.uint8)
        image[..., 0] = 5 * (i + offset)
        image[mask == 1] = (200, 50, 50)
        image[mask == 2] = (50, 50, 200)
        rows["image"].append(Image.fromarray(image))
        rows["mask"].append(Image.fromarray(mask, mode="L"))
        rows["landmarks"].append([[10.0, 15.0], [30.0, 15.0], [20.0, 24.0], [14.0, 30.0], [26.0, 30.0]])
        rows["smiling"].append((i + offset) % 2)
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image(),
                                  "landmarks": datasets.Array2D(shape=(5, 2), dtype="float32"),
                                  "smiling": datasets.ClassLabel(names=["no", "yes"])})
    return datasets.Dataset.from_dict(rows, features=features)


def test_a_hub_dataset_id_from_the_cache_with_its_revision_and_splits(offline_datasets):
    hub_cached_dataset(offline_datasets, "me/faces", {"train": labelled_faces(8), "validation": labelled_faces(3, 8),
                                                      "test": labelled_faces(4, 20)})
    data = load_data(DataOptions(source="me/faces", resolution=32), "classification")
    assert (len(data.train), len(data.test)) == (8, 4) and data.schema.classes == ("no", "yes")
    assert data.description["hub"] == {"id": "me/faces", "revision": SHA, "requested_revision": None,
                                       "config": "default", "train_split": "train", "test_split": "test",
                                       "test_held_out": None}
    data = load_data(DataOptions(source="me/faces", resolution=32, data_split=("train", "validation"),
                                 data_revision=SHA), "landmarks")
    assert (len(data.train), len(data.test)) == (8, 3) and data.schema.eye_indices == (0, 1)  # 5-point layout
    assert all("[validation]" in n for n in data.test.names)
    one = load_data(DataOptions(source="me/faces", resolution=32, data_split=("train",)), "segmentation")
    assert len(one.train) + len(one.test) == 8 and "fixed-seed split" in one.description["split"]
    assert one.description["hub"]["test_split"] == "train" and "fixed-seed" in one.description["hub"]["test_held_out"]
    with pytest.raises(UserError, match="the `datasets` cache holds revision 0123456789ab"):
        load_data(DataOptions(source="me/faces", resolution=32, data_revision="f" * 40), "classification")
    with pytest.raises(UserError, match="has no split 'dev'; splits: train, validation, test"):
        load_data(DataOptions(source="me/faces", resolution=32, data_split=("dev",)), "classification")
    with pytest.raises(UserError, match=r"cannot load dataset 'me/other'.*in the `datasets` cache"):
        load_data(DataOptions(source="me/other", resolution=32), "classification")


def test_a_builder_name_needs_data_dir(tmp_path, offline_datasets):
    with pytest.raises(UserError, match=r"--data imagefolder is a `datasets` builder.*--data-dir DIR"):
        load_data(DataOptions(source="imagefolder", resolution=16), "classification")
    for cls in ("cat", "dog"):
        (tmp_path / "pets" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16), (100 * (cls == "dog"), 10 * i, 0)).save(tmp_path / "pets" / cls / f"{i}.png")
    data = load_data(DataOptions(source="imagefolder", data_dir=str(tmp_path / "pets"), resolution=16),
                     "classification")
    assert data.schema.classes == ("cat", "dog") and data.description["hub"] is None
    with pytest.raises(UserError, match="--data-config, --data-dir apply to `datasets` data"):
        load_data(DataOptions(source=str(tmp_path / "pets"), data_config="x", data_dir="y", resolution=16),
                  "classification")


def test_dataset_rows_are_decoded_a_chunk_at_a_time(tmp_path, monkeypatch):
    import datasets

    from genbackbones.evaluate import data as data_module

    labelled_faces(10).save_to_disk(str(tmp_path / "ds"))
    requests = []
    original = datasets.Dataset.__getitem__

    def spy(self, key):
        if not isinstance(key, str):  # column reads (labels) are cheap; count row reads
            requests.append(len(key) if isinstance(key, list) else 1)
        return original(self, key)

    monkeypatch.setattr(datasets.Dataset, "__getitem__", spy)
    monkeypatch.setattr(data_module, "DECODE_CHUNK", 3)
    data = load_data(DataOptions(source=str(tmp_path / "ds"), resolution=32, classes=("bg", "l_eye", "r_eye")),
                     "segmentation")
    assert len(data.train) + len(data.test) == 10
    assert requests and max(requests) <= 3 and sum(requests) == 10  # every row decoded once, <= 3 at a time
    assert data.schema.mirror == (0, 2, 1)


def test_mask_class_names_from_a_classlabel_in_the_dataset_features(tmp_path):
    import datasets

    names = ["background", "left_eye", "right_eye"]
    rows = {"image": [], "mask": []}
    for i in range(6):
        mask = np.zeros((24, 24), np.int64)
        mask[8:14, 2:10], mask[8:14, 14:22] = 1, 2
        rows["image"].append(Image.fromarray((mask * 90 + i).astype(np.uint8)).convert("RGB"))
        rows["mask"].append(mask.tolist())
    features = datasets.Features({"image": datasets.Image(),
                                  "mask": datasets.List(datasets.List(datasets.ClassLabel(names=names)))})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "ds"))
    data = load_data(DataOptions(source=str(tmp_path / "ds"), resolution=24), "segmentation")
    assert data.schema.classes == tuple(names) and data.schema.mirror == (0, 2, 1)
    assert data.description["classes_source"] == "the 'mask' column's ClassLabel"
    assert set(torch.cat([data.train.masks, data.test.masks]).unique().tolist()) == {0, 1, 2}


def test_merging_into_a_run_drops_entries_of_the_first_format(tmp_path):
    from genbackbones.evaluate.report import merge_into_run

    legacy = {"task_type": "image-segmentation", "dataset_type": "genbackbones/faces", "dataset_name": "faces",
              "metric_type": "mean_iou", "metric_name": "mIoU @ 4 labels", "metric_value": 20.0}
    kept = {"task_type": "image-classification", "dataset_type": "me/faces", "dataset_name": "me/faces",
            "metric_type": "accuracy", "metric_name": "top-1", "metric_value": 50.0, "metric_config": "linear",
            "metric_args": {"labels": 4}}
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "evaluation" / "model_index.json").write_text(json.dumps(
        {"model_name": "run", "eval_results": [legacy, kept], "rows": []}))
    new = {**kept, "metric_config": "knn", "metric_value": 55.0}
    merged = json.loads(merge_into_run(tmp_path, {"model_name": "run", "eval_results": [new], "rows": []}).read_text())
    assert merged["eval_results"] == [kept, new]  # linear and knn at 4 labels are different entries
