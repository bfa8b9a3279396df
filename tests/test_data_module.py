"""CocoDataModule: round trips through the model-facing batches, and every bad-data case."""

import json
import logging
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from focalbench.data import CocoDataModule, DataError, build_dataset
from focalbench.data.coco import IMAGENET_MEAN, IMAGENET_STD

CATS = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 10, "name": "bird"}]


def write_set(root, images, annotations, categories=CATS, split="train", write_files=True, seed=0):
    """A hand-made COCO split: ``images`` as (id, width, height); random-pixel PNGs in ``root/images``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    imgs = []
    for image_id, w, h in images:
        name = f"{split}_{image_id}.png"
        imgs.append({"id": image_id, "file_name": name, "width": w, "height": h})
        if write_files:
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / name)
    anns = [{"id": i + 1, "iscrowd": 0, "area": 1.0, **a} for i, a in enumerate(annotations)]
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps({"images": imgs, "annotations": anns, "categories": categories}))
    return path


def simple_set(root, train_anns=None, val_anns=None, **kw):
    train_anns = train_anns if train_anns is not None else [
        {"image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 12]},
        {"image_id": 2, "category_id": 10, "bbox": [20, 5, 8, 8]},
    ]
    val_anns = val_anns if val_anns is not None else [{"image_id": 1, "category_id": 3, "bbox": [4, 4, 6, 6]}]
    write_set(root, [(1, 32, 32), (2, 32, 32)], train_anns, split="train", **kw)
    write_set(root, [(1, 32, 32)], val_anns, split="val", seed=1, **kw)
    return root


def dm_for(root, **kw):
    args = dict(root=str(root), image_size=32, max_size=32, size_divisible=32, batch_size=2, flip_prob=0.0,
                drop_last=False)
    args.update(kw)
    return CocoDataModule(**args)


def one_line_error(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


def denormalise(images):
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    return images * std + mean


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "shapes"
    build_dataset("shapes", root, seed=0, train=8, val=4, size=64, workers=1, progress=False)
    return root


# --- round trips ---------------------------------------------------------------------------------------


def test_round_trip_built_shapes(tiny_shapes):
    from pycocotools.coco import COCO

    dm = dm_for(tiny_shapes, image_size=64, max_size=64, size_divisible=64, batch_size=4)
    dm.setup("fit")
    assert dm.num_classes == 5 and dm.label_to_cat_id == [1, 2, 3, 4, 5]
    assert dm.class_names == ["ellipse", "rectangle", "triangle", "ring", "cross"]
    gt = COCO(str(tiny_shapes / "annotations" / "instances_train.json"))
    seen = set()
    for images, targets in dm.train_dataloader():
        assert images.shape == (4, 3, 64, 64) and images.dtype == torch.float32
        pixels = denormalise(images)
        for i, t in enumerate(targets):
            seen.add(t["image_id"])
            anns = gt.imgToAnns[t["image_id"]]
            want = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
            assert torch.equal(t["boxes"], want) and t["boxes"].dtype == torch.float32
            assert t["labels"].tolist() == [a["category_id"] - 1 for a in anns]
            assert t["labels"].dtype == torch.int64
            assert t["scale"] == 1.0 and t["orig_size"] == (64, 64)
            file = np.array(Image.open(tiny_shapes / "images" / gt.imgs[t["image_id"]]["file_name"]))
            assert torch.allclose(pixels[i], torch.from_numpy(file).permute(2, 0, 1).float(), atol=1e-3)
    assert seen == set(gt.imgs)
    assert len(dm.val_coco.imgs) == 4 and dm.stats["val"]["images"] == 4
    images, targets = next(iter(dm.val_dataloader()))
    assert images.shape[0] == 4 and [t["image_id"] for t in targets] == [1, 2, 3, 4]


def test_flip_mirrors_image_and_boxes(tiny_shapes):
    kw = dict(image_size=64, max_size=64, size_divisible=64, batch_size=8)
    plain, flipped = dm_for(tiny_shapes, **kw), dm_for(tiny_shapes, flip_prob=1.0, **kw)
    plain.setup("fit")
    flipped.setup("fit")
    (a, ta), (b, tb) = plain.train_dataloader().__iter__().__next__(), flipped.train_dataloader().__iter__().__next__()
    assert [t["image_id"] for t in ta] == [t["image_id"] for t in tb]  # same seed: same order
    assert torch.allclose(a.flip(-1), b)
    for x, y in zip(ta, tb):
        want = torch.stack([64 - x["boxes"][:, 2], x["boxes"][:, 1], 64 - x["boxes"][:, 0], x["boxes"][:, 3]], 1)
        assert torch.equal(y["boxes"], want)
    # validation never flips
    va, _ = next(iter(flipped.val_dataloader()))
    vb, _ = next(iter(plain.val_dataloader()))
    assert torch.equal(va, vb)


def test_flips_and_order_are_reproducible_and_seeded(tiny_shapes):
    def epoch(seed, workers=0):
        dm = dm_for(tiny_shapes, image_size=64, max_size=64, size_divisible=64, batch_size=4, flip_prob=0.5,
                    seed=seed, num_workers=workers)
        dm.setup("fit")
        return [(t["image_id"], t["boxes"].sum().item()) for _, ts in dm.train_dataloader() for t in ts]

    assert epoch(0) == epoch(0)
    assert epoch(0) != epoch(1)
    assert epoch(0, workers=1) == epoch(0, workers=1)


def test_resize_to_scale_and_padding(tmp_path):
    write_set(tmp_path, [(1, 60, 40), (2, 30, 30)], [{"image_id": 1, "category_id": 3, "bbox": [6, 4, 30, 20]}])
    write_set(tmp_path, [(1, 60, 40)], [], split="val")
    dm = dm_for(tmp_path, image_size=80, max_size=100, size_divisible=32, batch_size=2, keep_empty=True)
    dm.setup("fit")
    images, targets = next(iter(dm.val_dataloader()))
    # shorter side 40 -> 80 would make the longer 120 > 100: scale = 100/60
    t = targets[0]
    assert t["scale"] == pytest.approx(100 / 60) and t["orig_size"] == (40, 60) and t["size"] == (67, 100)
    assert images.shape == (1, 3, 96, 128)
    assert torch.count_nonzero(images[0, :, 67:, :]) == 0 and torch.count_nonzero(images[0, :, :, 100:]) == 0
    batch = {t["image_id"]: t for _, ts in dm.train_dataloader() for t in ts}
    assert torch.allclose(batch[1]["boxes"], torch.tensor([[10.0, 6.7, 60.0, 40.2]]), atol=1e-4)
    assert batch[2]["boxes"].shape == (0, 4) and batch[2]["size"] == (80, 80)  # kept pure negative


def test_crowd_and_empty_images(tmp_path, caplog):
    anns = [{"image_id": 1, "category_id": 7, "bbox": [2, 2, 10, 10]},
            {"image_id": 1, "category_id": 7, "bbox": [15, 15, 10, 10], "iscrowd": 1},
            {"image_id": 2, "category_id": 3, "bbox": [1, 1, 20, 20], "iscrowd": 1}]
    write_set(tmp_path, [(1, 32, 32), (2, 32, 32), (3, 32, 32)], anns)
    write_set(tmp_path, [(1, 32, 32), (2, 32, 32)], anns[:2], split="val")
    dm = dm_for(tmp_path)
    dm.setup("fit")
    assert dm.stats["train"]["crowd_boxes"] == 2 and dm.stats["train"]["empty_images"] == 2
    assert len(dm.train_set) == 3
    targets = {t["image_id"]: t for _, ts in dm.train_dataloader() for t in ts}
    assert targets[1]["boxes"].tolist() == [[2.0, 2.0, 12.0, 12.0]]  # the crowd box is not a target
    assert len(targets[2]["labels"]) == 0 and len(targets[3]["labels"]) == 0
    assert len(dm.val_coco.anns) == 2 and len(dm.val_coco.imgs) == 2  # evaluator keeps crowd and all images
    dropped = dm_for(tmp_path, keep_empty=False)
    with caplog.at_level(logging.INFO, logger="focalbench.data"):
        dropped.setup("fit")
    assert len(dropped.train_set) == 1 and dropped.stats["train"]["empty_images_dropped"] == 2
    assert len(dropped.val_set) == 2  # validation keeps every image
    assert "empty_images_dropped=2" in caplog.text


def test_label_mapping_and_lazy_setup(tmp_path):
    simple_set(tmp_path)
    dm = dm_for(tmp_path)
    assert dm.num_classes == 3  # sets itself up on first use
    assert dm.label_to_cat_id == [3, 7, 10] and dm.cat_id_to_label == {3: 0, 7: 1, 10: 2}
    assert dm.class_names == ["cat", "dog", "bird"]
    labels = {t["image_id"]: t["labels"].tolist() for _, ts in dm.train_dataloader() for t in ts}
    assert labels == {1: [1], 2: [2]}


def test_picklable_after_setup(tmp_path):
    simple_set(tmp_path)
    dm = dm_for(tmp_path)
    dm.setup("fit")
    clone = pickle.loads(pickle.dumps(dm))
    clone.setup("fit")
    a, _ = next(iter(dm.val_dataloader()))
    b, _ = next(iter(clone.val_dataloader()))
    assert torch.equal(a, b) and clone.val_coco.imgs.keys() == dm.val_coco.imgs.keys()


def test_prepare_data_builds_missing_dataset_once(tmp_path):
    root = tmp_path / "data" / "shapes"
    args = {"train": 4, "val": 2, "size": 64}
    dm = dm_for(root, build="shapes", build_args=args, image_size=64, max_size=64, size_divisible=64)
    dm.prepare_data()
    stamp = (root / "build.json").stat().st_mtime_ns
    dm.prepare_data()  # already built: kept
    assert (root / "build.json").stat().st_mtime_ns == stamp
    dm.setup("fit")
    assert dm.num_classes == 5 and len(dm.train_set) == 4 and len(dm.val_set) == 2
    other = dm_for(root, build="shapes", build_args={**args, "train": 5})
    with pytest.raises(DataError) as e:
        other.prepare_data()
    one_line_error(e, "build.json", "'train': 4", "'train': 5")
    with pytest.raises(ValueError, match="data.build"):
        dm_for(root, build="mnist")


# --- bad data ------------------------------------------------------------------------------------------


def test_missing_unreadable_and_non_coco_annotation_files(tmp_path):
    simple_set(tmp_path)
    path = tmp_path / "annotations" / "instances_train.json"
    with pytest.raises(DataError) as e:
        dm_for(tmp_path, train_ann="annotations/nope.json").setup("fit")
    one_line_error(e, "nope.json", "not found")
    with pytest.raises(DataError) as e:
        dm_for(tmp_path, train_ann="annotations").setup("fit")
    one_line_error(e, "annotations", "not a file")
    cases = [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "top level is a list"),
        (json.dumps({"images": [], "annotations": []}), "missing key(s) ['categories']"),
        (json.dumps({"images": {}, "annotations": [], "categories": []}), "'images' is a dict"),
        (json.dumps({"images": [{"id": 1, "width": 3, "height": 3}], "annotations": [], "categories": CATS}),
         "images[0] has no 'file_name'"),
        (json.dumps({"images": [{"id": 1, "file_name": "a", "width": 3, "height": 3}],
                     "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3]}],
                     "categories": CATS}), "expected 4 numbers"),
        (json.dumps({"images": [{"id": 1, "file_name": "a", "width": 3, "height": 3}] * 2, "annotations": [],
                     "categories": CATS}), "images id 1 appears more than once"),
        (json.dumps({"images": [{"id": 1, "file_name": "a", "width": 0, "height": 3}], "annotations": [],
                     "categories": CATS}), "must be positive"),
    ]
    for text, needle in cases:
        path.write_text(text)
        with pytest.raises(DataError) as e:
            dm_for(tmp_path).setup("fit")
        one_line_error(e, str(path), needle)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError) as e:
        dm_for(tmp_path).setup("fit")
    one_line_error(e, str(path), "not valid JSON")


def test_missing_image_file(tmp_path):
    simple_set(tmp_path)
    (tmp_path / "images" / "train_2.png").unlink()
    for cache in (True, False):
        with pytest.raises(DataError) as e:
            dm_for(tmp_path, cache_images=cache).setup("fit")
        one_line_error(e, "train_2.png", "image id 2", "instances_train.json", "not found")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_file(tmp_path, damage):
    simple_set(tmp_path)
    f = tmp_path / "images" / "train_2.png"
    f.write_bytes(b"this is not a png" if damage == "garbage" else f.read_bytes()[:60])
    # cache: every image is decoded at setup; no cache: PIL verify() on all (small set) at setup
    for kw in ({"cache_images": True}, {"cache_images": False, "verify_images": "all"},
               {"cache_images": False, "verify_images": "auto"}):
        with pytest.raises(DataError) as e:
            dm_for(tmp_path, **kw).setup("fit")
        one_line_error(e, "train_2.png", "image id 2")
    # lazy: setup passes, the first load of that image names it
    dm = dm_for(tmp_path, cache_images=False, verify_images="lazy")
    dm.setup("fit")
    index = [r.image_id for r in dm.train_set.records].index(2)
    with pytest.raises(DataError) as e:
        dm.train_set[index]
    one_line_error(e, "train_2.png", "cannot be decoded")


def test_image_size_mismatch(tmp_path):
    simple_set(tmp_path)
    Image.new("RGB", (20, 32)).save(tmp_path / "images" / "train_1.png")
    for cache in (True, False):
        with pytest.raises(DataError) as e:
            dm_for(tmp_path, cache_images=cache).setup("fit")
        one_line_error(e, "train_1.png", "20x32", "32x32")


@pytest.mark.parametrize("bbox,reason", [([2, 3, 0, 5], "non-positive"), ([2, 3, -4, 5], "non-positive"),
                                         ([25, 3, 20, 5], "outside"), ([-5, 3, 4, 5], "outside")])
def test_bad_boxes_skip_or_error(tmp_path, caplog, bbox, reason):
    bad = {"image_id": 2, "category_id": 7, "bbox": bbox}
    simple_set(tmp_path, val_anns=[{"image_id": 1, "category_id": 3, "bbox": [4, 4, 6, 6]},
                                   {"image_id": 1, "category_id": 3, "bbox": bbox}])
    write_set(tmp_path, [(1, 32, 32), (2, 32, 32)], [{"image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 12]}, bad])
    with pytest.raises(DataError) as e:
        dm_for(tmp_path, bad_boxes="error").setup("fit")
    one_line_error(e, "instances_val.json", "annotation id 2", reason, "bad_boxes=skip")
    dm = dm_for(tmp_path, bad_boxes="skip")
    with caplog.at_level(logging.WARNING, logger="focalbench.data"):
        dm.setup("fit")
    assert dm.stats["train"]["bad_boxes_skipped"] == 1 and dm.stats["val"]["bad_boxes_skipped"] == 1
    key = "bad_boxes_non_positive_size" if reason == "non-positive" else "bad_boxes_outside_image"
    assert dm.stats["train"][key] == 1
    assert "skipped 1 bad box" in caplog.text and "instances_train.json" in caplog.text
    targets = {t["image_id"]: t for _, ts in dm.train_dataloader() for t in ts}
    assert len(targets[2]["boxes"]) == 0
    assert len(dm.val_coco.anns) == 1  # the evaluator never sees the skipped box
    with pytest.raises(ValueError, match="data.bad_boxes"):
        dm_for(tmp_path, bad_boxes="drop")


def test_boxes_within_tolerance_are_clipped_and_counted(tmp_path):
    simple_set(tmp_path, train_anns=[{"image_id": 1, "category_id": 7, "bbox": [-0.5, 2, 10, 30.5]}])
    dm = dm_for(tmp_path)
    dm.setup("fit")
    assert dm.stats["train"]["boxes_clipped"] == 1 and dm.stats["train"]["bad_boxes_skipped"] == 0
    assert dm.train_set.records[0].boxes.tolist() == [[0.0, 2.0, 9.5, 32.0]]


def test_unknown_category_and_orphan_annotations(tmp_path):
    simple_set(tmp_path, train_anns=[{"image_id": 1, "category_id": 99, "bbox": [2, 3, 10, 12]}])
    with pytest.raises(DataError) as e:
        dm_for(tmp_path, bad_boxes="skip").setup("fit")
    one_line_error(e, "instances_train.json", "unknown category ids [99]", "annotation id 1")
    simple_set(tmp_path, train_anns=[{"image_id": 5, "category_id": 3, "bbox": [2, 3, 10, 12]}])
    with pytest.raises(DataError) as e:
        dm_for(tmp_path).setup("fit")
    one_line_error(e, "instances_train.json", "image_id 5")


def test_train_and_val_categories_must_agree(tmp_path):
    simple_set(tmp_path)
    write_set(tmp_path, [(1, 32, 32)], [], categories=CATS[:2], split="val")
    with pytest.raises(DataError) as e:
        dm_for(tmp_path).setup("fit")
    one_line_error(e, "instances_train.json", "category ids")
    write_set(tmp_path, [(1, 32, 32)], [], categories=[{**c, "name": c["name"].upper()} for c in CATS], split="val")
    with pytest.raises(DataError) as e:
        dm_for(tmp_path).setup("fit")
    one_line_error(e, "instances_train.json", "categories", "differ")


def test_no_training_images_left(tmp_path):
    simple_set(tmp_path, train_anns=[])
    with pytest.raises(DataError) as e:
        dm_for(tmp_path, keep_empty=False).setup("fit")
    one_line_error(e, "instances_train.json", "no training images left")


def test_val_coco_scores_perfect_detections_as_ap_100(tiny_shapes):
    """``val_coco`` + ``label_to_cat_id`` are what the COCO evaluator needs: ground truth fed back is AP 1."""
    from pycocotools.cocoeval import COCOeval

    dm = dm_for(tiny_shapes, image_size=64, max_size=64, size_divisible=64, batch_size=4)
    dm.setup("validate")
    results = []
    for _, targets in dm.val_dataloader():
        for t in targets:
            for (x0, y0, x1, y1), label in zip((t["boxes"] / t["scale"]).tolist(), t["labels"].tolist()):
                results.append({"image_id": t["image_id"], "category_id": dm.label_to_cat_id[label],
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "score": 1.0})
    assert dm.train_set is None  # "validate" reads only the validation split
    ev = COCOeval(dm.val_coco, dm.val_coco.loadRes(results), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0) and ev.stats[1] == pytest.approx(1.0)


@pytest.mark.parametrize("kw,needle", [({"image_size": 0}, "data.image_size"), ({"max_size": 16}, "data.max_size"),
                                       ({"flip_prob": 2.0}, "data.flip_prob"),
                                       ({"verify_images": "some"}, "data.verify_images"),
                                       ({"batch_size": 1.5}, "data.batch_size")])
def test_bad_settings_fail_at_construction(tmp_path, kw, needle):
    with pytest.raises(ValueError) as e:
        dm_for(tmp_path, **kw)
    one_line_error(e, f"{needle}={next(iter(kw.values()))}: ")  # key=value: what is allowed
