"""The stylised-faces domain: determinism, labels that agree with the pixels, exports, speed."""

from __future__ import annotations

import csv
import time

import numpy as np
import pytest
from PIL import Image

from genbackbones.data import (
    ATTRIBUTES,
    LANDMARK_NAMES,
    PALETTE,
    SEG_CLASSES,
    FaceDomain,
    colorize_mask,
    render_batch,
    render_face,
    to_tensor,
)
from genbackbones.data import faces
from genbackbones.errors import UserError

EYES, NOSE, MOUTH, GLASSES = (SEG_CLASSES.index(c) for c in ("eyes", "nose", "mouth", "glasses"))


@pytest.fixture(scope="module")
def batch500():
    return render_batch(seed=0, indices=range(500), size=64)


def test_constants_describe_the_data():
    assert SEG_CLASSES[:8] == ("background", "skin", "hair", "eyes", "brows", "nose", "mouth", "glasses")
    assert LANDMARK_NAMES == ("left_eye", "right_eye", "nose_tip", "left_mouth", "right_mouth")
    assert PALETTE.shape == (len(SEG_CLASSES), 3) and PALETTE.dtype == np.uint8
    assert len({tuple(c) for c in PALETTE}) == len(SEG_CLASSES)  # colours tell classes apart
    assert len(ATTRIBUTES["hair_colour"]) == 5 and len(ATTRIBUTES["skin_tone"]) == 4
    assert ATTRIBUTES["head_pose"] == ("left", "frontal", "right")
    assert ATTRIBUTES["glasses"] == ATTRIBUTES["smiling"] == ("no", "yes")


def test_sample_types_and_shapes():
    for size in (32, 64, 128):
        f = render_face(7, 3, size)
        assert f.image.shape == (size, size, 3) and f.image.dtype == np.uint8
        assert f.mask.shape == (size, size) and f.mask.dtype == np.uint8
        assert f.landmarks.shape == (5, 2) and f.landmarks.dtype == np.float32
        assert set(f.labels) == set(ATTRIBUTES)
        assert all(0 <= f.labels[k] < len(names) for k, names in ATTRIBUTES.items())
        assert f.mask.max() < len(SEG_CLASSES)
        assert ((f.landmarks >= 0) & (f.landmarks < size)).all()


def test_bad_arguments_are_user_errors():
    for size in (16, 1000, 64.0):
        with pytest.raises(UserError):
            render_face(0, 0, size)
    with pytest.raises(UserError):
        render_batch(-1, [0])
    with pytest.raises(UserError):
        FaceDomain().split_indices("validation")
    empty = render_batch(0, [], 64)
    assert empty["images"].shape == (0, 64, 64, 3) and empty["labels"]["glasses"].shape == (0,)


def test_same_seed_and_index_give_the_same_bytes_whatever_came_before():
    a = render_face(3, 5)
    render_batch(3, range(40))  # unrelated work in between must not matter
    b = render_face(3, 5)
    for x, y in [(a.image, b.image), (a.mask, b.mask), (a.landmarks, b.landmarks)]:
        assert x.tobytes() == y.tobytes()
    assert a.labels == b.labels

    # Alone == inside a batch, at any position, across chunk boundaries, in any order.
    batch = render_batch(3, [40, 5, 17, 2, 99] + list(range(100, 130)), 64)
    assert batch["images"][1].tobytes() == a.image.tobytes()
    assert batch["masks"][1].tobytes() == a.mask.tobytes()
    assert batch["landmarks"][1].tobytes() == a.landmarks.tobytes()
    assert {k: int(v[1]) for k, v in batch["labels"].items()} == a.labels
    late = render_face(3, 129)
    assert batch["images"][-1].tobytes() == late.image.tobytes()

    assert render_face(3, 6).image.tobytes() != a.image.tobytes()  # another index, another face
    assert render_face(4, 5).image.tobytes() != a.image.tobytes()  # another seed, another face


def test_painting_features_in_a_window_changes_no_byte(monkeypatch):
    """The speed trick (inner features painted in a window) must never clip a feature."""
    fast = render_batch(1, range(300), 64)

    def whole_image(q, size):
        n = len(q["scale"])
        return np.zeros(n, np.int64), np.zeros(n, np.int64), size

    monkeypatch.setattr(faces, "_feature_window", whole_image)
    slow = render_batch(1, range(300), 64)
    assert np.array_equal(fast["images"], slow["images"])
    assert np.array_equal(fast["masks"], slow["masks"])


def _classes_near(mask: np.ndarray, point: np.ndarray, radius: float) -> set[int]:
    """Classes of the pixels whose centres lie within `radius` of `point` (x, y)."""
    yy, xx = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
    near = (xx - point[0]) ** 2 + (yy - point[1]) ** 2 <= radius**2
    return set(mask[near].tolist())


def test_landmarks_sit_on_their_parts(batch500):
    for n in range(200):
        mask, (left_eye, right_eye, nose, left_mouth, right_mouth) = batch500["masks"][n], batch500["landmarks"][n]

        def at(p):
            return int(mask[int(round(float(p[1]))), int(round(float(p[0])))])

        assert at(left_eye) in (EYES, GLASSES) and at(right_eye) in (EYES, GLASSES), n
        assert at(nose) == NOSE, n
        for corner in (left_mouth, right_mouth):
            assert MOUTH in _classes_near(mask, corner, 1.0), n
        assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0], n  # "left" = image-left


def test_glasses_label_matches_the_mask_and_is_rare(batch500):
    has_glasses = (batch500["masks"] == GLASSES).any(axis=(1, 2))
    assert np.array_equal(batch500["labels"]["glasses"].astype(bool), has_glasses)
    assert 0.02 <= has_glasses.mean() <= 0.15


def test_every_class_and_label_value_occurs(batch500):
    present = np.bincount(batch500["masks"].ravel(), minlength=len(SEG_CLASSES))
    assert (present > 0).all(), present
    for name, names in ATTRIBUTES.items():
        counts = np.bincount(batch500["labels"][name], minlength=len(names))
        assert len(counts) == len(names) and (counts > 0).all(), (name, counts)
    counts = np.bincount(batch500["labels"]["hair_colour"], minlength=5)
    assert counts.min() > 0.1 * 500  # roughly balanced classes


def test_head_pose_label_follows_the_features(batch500):
    """Faces labelled "left" have their nose left of the eyes' midpoint; "right" the other way."""
    lm = batch500["landmarks"]
    nose_offset = lm[:, 2, 0] - (lm[:, 0, 0] + lm[:, 1, 0]) / 2
    pose = batch500["labels"]["head_pose"]
    assert nose_offset[pose == 0].mean() < 0 < nose_offset[pose == 2].mean()


def test_mask_agrees_with_the_image(batch500):
    images, masks = batch500["images"].astype(np.float64), batch500["masks"]

    def explained(image, mask):  # share of the pixel variance explained by per-class mean colours
        x, m = image.reshape(-1, 3), mask.reshape(-1)
        means = np.zeros((len(SEG_CLASSES), 3))
        for c in np.unique(m):
            means[c] = x[m == c].mean(axis=0)
        return 1 - ((x - means[m]) ** 2).sum() / ((x - x.mean(axis=0)) ** 2).sum()

    own = np.array([explained(images[i], masks[i]) for i in range(100)])
    other = np.array([explained(images[i], masks[i + 1]) for i in range(100)])
    assert own.mean() > other.mean() + 0.1 and (own > other).mean() > 0.9

    skin_vs_background = [
        np.abs(images[i][masks[i] == 1].mean(axis=0) - images[i][masks[i] == 0].mean(axis=0)).sum()
        for i in range(100)
    ]
    assert np.mean(skin_vs_background) > 30


def test_colorize_mask_and_to_tensor():
    f = render_face(0, 1)
    rgb = colorize_mask(f.mask)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[f.mask == 1][0], PALETTE[1])
    x = to_tensor(np.stack([f.image, f.image]))
    assert tuple(x.shape) == (2, 3, 64, 64) and str(x.dtype) == "torch.float32"
    assert -1.0 <= x.min().item() and x.max().item() <= 1.0
    assert abs(x[0, 0, 10, 20].item() - (f.image[10, 20, 0] / 127.5 - 1)) < 1e-6


def test_splits_are_disjoint_and_batches_come_from_them():
    domain = FaceDomain(seed=0, size=32)
    train, test = domain.split_indices("train"), domain.split_indices("test")
    assert len(train) == 1_000_000 and len(test) == 100_000
    assert train.stop <= test.start  # no overlap
    with pytest.raises(UserError):
        domain.first_indices(len(test) + 1, "test")
    batches = domain.image_batches(batch_size=4, split="test", start=2)
    first = next(batches)
    assert tuple(first.shape) == (4, 3, 32, 32)
    expected = to_tensor(render_batch(0, range(test.start + 2, test.start + 6), 32)["images"])
    assert (first == expected).all()


def test_as_dataset_columns_and_values():
    import datasets

    domain = FaceDomain(seed=2, size=32)
    ds = domain.as_dataset(5, split="test")
    assert len(ds) == 5
    assert set(ds.column_names) == {"image", "mask", "landmarks", "index", *ATTRIBUTES}
    assert isinstance(ds.features["image"], datasets.Image) and isinstance(ds.features["mask"], datasets.Image)
    for name, names in ATTRIBUTES.items():
        assert ds.features[name].names == list(names)

    batch = render_batch(2, range(1_000_000, 1_000_005), 32)
    row = ds[3]
    assert row["index"] == 1_000_003
    assert np.array_equal(np.asarray(row["image"]), batch["images"][3])
    assert row["mask"].mode == "L" and np.array_equal(np.asarray(row["mask"]), batch["masks"][3])
    assert np.array_equal(np.asarray(row["landmarks"], np.float32), batch["landmarks"][3])
    assert all(row[name] == batch["labels"][name][3] for name in ATTRIBUTES)


def test_save_image_folder_reads_back(tmp_path):
    domain = FaceDomain(seed=1, size=32)
    out = domain.save_image_folder(tmp_path / "faces", n=4, split="train")
    batch = render_batch(1, range(4), 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces"]  # no temp folder left behind
    for i in range(4):
        image = np.asarray(Image.open(out / "images" / f"{i:07d}.png"))
        mask = Image.open(out / "masks" / f"{i:07d}.png")
        assert np.array_equal(image, batch["images"][i])
        assert mask.mode == "L" and np.array_equal(np.asarray(mask), batch["masks"][i])

    rows = list(csv.DictReader(open(out / "landmarks.csv")))
    assert list(rows[0]) == ["name"] + [f"{lm}_{axis}" for lm in LANDMARK_NAMES for axis in "xy"]
    assert [r["name"] for r in rows] == [f"{i:07d}.png" for i in range(4)]
    values = np.array([[float(r[k]) for k in list(r)[1:]] for r in rows]).reshape(4, 5, 2)
    assert np.abs(values - batch["landmarks"]).max() < 1e-3

    labels = list(csv.DictReader(open(out / "labels.csv")))
    assert list(labels[0]) == ["name", *ATTRIBUTES]
    for i, r in enumerate(labels):
        assert all(int(r[name]) == batch["labels"][name][i] for name in ATTRIBUTES)

    with pytest.raises(FileExistsError):
        domain.save_image_folder(out, n=2)
    domain.save_image_folder(out, n=2, masks=False, overwrite=True)
    assert len(list((out / "images").iterdir())) == 2 and not (out / "masks").exists()


def test_render_speed():
    """Conservative floor; the measured figure is in the README (benchmarks/render_speed.py)."""
    render_batch(0, range(64), 64)  # warm up
    start = time.process_time()  # CPU time: not fooled by other processes on the machine
    render_batch(0, range(1000, 1600), 64)
    rate = 600 / (time.process_time() - start)
    assert rate > 300, f"{rate:.0f} images/s"
