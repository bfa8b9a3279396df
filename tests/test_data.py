"""Built-in datasets: determinism, COCO validity, the foreground-ratio claim, the CLI."""

import json

import numpy as np
import pytest
from PIL import Image

from focalbench.data import DataError, build_dataset
from focalbench.data import digits, shapes
from focalbench.data.__main__ import main
from focalbench.data.build import is_built
from focalbench.data.stats import anchor_stats

TINY = {"train": 8, "val": 4, "size": 64}


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["shapes", "digits"])
def test_build_is_deterministic_and_seed_dependent(tmp_path, name):
    a = build_dataset(name, tmp_path / "a", seed=3, progress=False, workers=1, **TINY)
    b = build_dataset(name, tmp_path / "b", seed=3, progress=False, workers=2, **TINY)  # parallel: same bytes
    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(fa) == 8 + 4 + 3  # images, 2 annotation files, build.json
    assert fa == fb
    assert a == b
    build_dataset(name, tmp_path / "c", seed=4, progress=False, workers=1, **TINY)
    fc = _files(tmp_path / "c")
    assert fc.keys() == fa.keys()
    assert fc["images/train_000000.png"] != fa["images/train_000000.png"]
    assert fc["annotations/instances_train.json"] != fa["annotations/instances_train.json"]


@pytest.mark.parametrize("name,num_classes", [("shapes", 5), ("digits", 10)])
def test_build_is_valid_coco(tmp_path, name, num_classes):
    from pycocotools.coco import COCO

    root = tmp_path / name
    build_dataset(name, root, seed=0, progress=False, workers=1, **TINY)
    assert is_built(root)
    for split, n in (("train", 8), ("val", 4)):
        coco = COCO(str(root / "annotations" / f"instances_{split}.json"))
        assert len(coco.imgs) == n
        assert sorted(coco.cats) == list(range(1, num_classes + 1))
        assert len(coco.anns) >= n  # at least one object per image
        for img in coco.imgs.values():
            with Image.open(root / "images" / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"]) == (64, 64)
                assert im.mode == "RGB"
        for ann in coco.anns.values():
            x, y, w, h = ann["bbox"]
            img = coco.imgs[ann["image_id"]]
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= img["width"] and y + h <= img["height"]
            assert ann["iscrowd"] == 0 and 0 < ann["area"] <= w * h
            assert ann["category_id"] in coco.cats


def test_build_replaces_only_builds_and_validates_args(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(DataError, match="not a focalbench build"):
        build_dataset("shapes", foreign, progress=False, **TINY)
    assert (foreign / "keep.txt").exists()
    with pytest.raises(DataError, match="not built in"):
        build_dataset("mnist", tmp_path / "x", progress=False)
    with pytest.raises(DataError, match="size=16"):
        build_dataset("shapes", tmp_path / "x", size=16, progress=False)
    with pytest.raises(DataError, match="train=0"):
        build_dataset("shapes", tmp_path / "x", train=0, progress=False)
    assert not list(tmp_path.glob(".x.building-*"))


@pytest.mark.parametrize("module", [shapes, digits])
def test_foreground_anchors_are_rare_at_cpu_anchors(module):
    """The claim of the issue: fg anchors well under 1% of all anchors (cpu profile, IoU >= 0.5)."""
    boxes, counts = [], []
    for i in range(40):
        _, objects = module.render(np.random.default_rng([0, 0, i]), 128, "train", 0)
        counts.append(len(objects))
        boxes.append(np.array([[x, y, x + w, y + h] for x, y, w, h in (o["bbox"] for o in objects)]))
    s = anchor_stats(boxes, 128, 128, num_scales=3, num_ratios=3, size_multiplier=1.0)
    assert s["anchors_per_image"] == 3069
    assert 1 <= min(counts) and max(counts) <= 4
    assert 0 < s["fg_fraction"] < 0.005
    assert s["bg_per_fg"] > 200
    assert s["fg_anchors"] + s["bg_anchors"] + s["ignored_anchors"] == 40 * 3069
    assert s["gt_boxes"] == sum(counts)
    # Forcing a match for every GT box (allow_low_quality_matches) can only add foreground anchors.
    assert s["fg_anchors_low_quality_matches"] >= s["fg_anchors"]
    assert 0 <= s["gt_without_anchor"] <= s["gt_boxes"]


def test_shapes_spans_sizes_and_aspect_ratios():
    wh = []
    for i in range(60):
        _, objects = shapes.render(np.random.default_rng([1, 0, i]), 128)
        wh += [o["bbox"][2:] for o in objects]
    wh = np.array(wh)
    side, aspect = np.sqrt(wh[:, 0] * wh[:, 1]), wh[:, 0] / wh[:, 1]
    assert side.min() >= 12 and side.max() <= 70 and side.max() > 45
    assert aspect.min() < 0.45 and aspect.max() > 2.2  # elongated objects both ways (Table 1c)


def _aspects(stretch=None, n=150):
    kw = {} if stretch is None else {"stretch": stretch}
    return np.array([o["bbox"][2] / o["bbox"][3] for i in range(n)
                     for o in digits.render(np.random.default_rng([0, 0, i]), 128, "train", 0, **kw)[1]])


def test_digits_stretch_spreads_aspect_ratios_and_default_draws_nothing_more():
    plain, spread = _aspects(), _aspects(2.5)
    assert np.array_equal(plain, _aspects(1.0))  # the default option is the set built before it existed
    q = np.quantile(plain, [0.1, 0.9])
    assert 0.4 < q[0] and q[1] < 0.8  # tall boxes: a digit is narrower than its scan
    qs = np.quantile(spread, [0.1, 0.5, 0.9])
    assert qs[0] < 0.5 and 0.75 < qs[1] < 1.2 and qs[2] > 1.6  # both ways, centred near 1


def test_generator_options_are_recorded_checked_and_compared(tmp_path):
    from focalbench.data import CocoDataModule
    from focalbench.data.build import build_args_of

    root = tmp_path / "digits"
    build_dataset("digits", root, progress=False, workers=1, stretch=2.5, **TINY)
    assert json.loads((root / "build.json").read_text())["options"] == {"stretch": 2.5}
    assert build_args_of(root)["stretch"] == 2.5
    build_dataset("digits", tmp_path / "plain", progress=False, workers=1, **TINY)
    assert "options" not in json.loads((tmp_path / "plain" / "build.json").read_text())  # as before options
    assert build_args_of(tmp_path / "plain")["stretch"] == 1.0
    with pytest.raises(DataError, match="unknown build argument 'stretch'.*seed, train, val, size$"):
        build_dataset("shapes", tmp_path / "s", progress=False, stretch=2.0, **TINY)
    with pytest.raises(DataError, match="stretch=0.5 must be a number >= 1"):
        build_dataset("digits", tmp_path / "d", progress=False, stretch=0.5, **TINY)
    dm = CocoDataModule(root=str(tmp_path / "plain"), build="digits", build_args={**TINY, "stretch": 2.5},
                        image_size=64, max_size=64, size_divisible=64)
    with pytest.raises(DataError) as e:  # a set built without the option is not the stretched one
        dm.prepare_data()
    msg = str(e.value)
    assert "\n" not in msg and "'stretch': 1.0" in msg and "'stretch': 2.5" in msg and "_stretch2.5" in msg


def test_cli_build_prints_ratio(tmp_path, capsys):
    rc = main(["build", "shapes", "--root", str(tmp_path), "--seed", "1", "--train", "6", "--val", "2",
               "--size", "64", "--workers", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "fg:bg = 1:" in out and "have no anchor at IoU >= 0.5" in out
    stats = json.loads((tmp_path / "shapes" / "build.json").read_text())
    assert stats["train"] == 6 and stats["val"] == 2 and stats["seed"] == 1
    assert stats["splits"]["train"]["anchors_cpu_profile"]["images"] == 6
    assert len(list((tmp_path / "shapes" / "images").glob("*.png"))) == 8
    assert main(["build", "shapes", "--root", str(tmp_path), "--size", "8"]) == 2
    assert "size=8" in capsys.readouterr().err


def test_anchor_stats_counts_known_boxes():
    from focalbench.model.anchors import grid_anchors

    anchors = grid_anchors(128, 128, 3, 3, 1.0)
    exact = anchors[500].numpy()[None]  # a box equal to an anchor: matched
    tiny = np.array([[60.0, 60.0, 62.0, 62.0]])  # 2x2 px: no anchor reaches IoU 0.5
    s = anchor_stats([exact, tiny, np.zeros((0, 4))], 128, 128)
    assert s["images"] == 3 and s["gt_boxes"] == 2
    assert s["fg_anchors"] >= 1
    assert s["gt_without_anchor"] == 1
    assert s["fg_anchors_low_quality_matches"] >= s["fg_anchors"] + 1
    assert s["bg_anchors"] >= 3069  # the empty image is all background
