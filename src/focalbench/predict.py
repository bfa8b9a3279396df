"""``python -m focalbench.predict RUN_DIR IMAGE [IMAGE ...] [--out DIR] [--score-thresh S] [override ...]``.

Runs a trained run's network (see ``focalbench.inference``) on your own images and draws its detections:
one ``<image stem>.png`` per image (boxes, class names and scores on the original pixels) and
``detections.json`` (COCO-style: file, box ``[x, y, w, h]`` in original pixels, category, score) in ``--out``.
Images are resized and normalised as the run's validation images are (``data.image_size``,
``data.max_size``, ``data.size_divisible``). Example::

    python -m focalbench.predict outputs/2026-12-03/10-00-00-000000 photos/*.jpg --out predictions
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from focalbench.config_schema import ConfigError, exit_config_error
from focalbench.data.errors import DataError

COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe",
          "#008080")


def read_image(path: Path) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()  # (3, H, W) uint8


@torch.no_grad()
def predict(run_dir, images, out_dir, overrides=(), weights=None, score_thresh: float = 0.3) -> list[dict]:
    import torch.nn.functional as F
    from torchvision.utils import draw_bounding_boxes

    from focalbench.data.coco import Collate, resize_scale
    from focalbench.inference import load_run

    run = load_run(run_dir, overrides, weights)
    model, cfg = run.module.model, run.cfg
    names = run.datamodule.class_names
    collate = Collate(int(cfg.data.size_divisible))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    detections = []
    for path in map(Path, images):
        image = read_image(path)
        h0, w0 = image.shape[1:]
        scale = resize_scale(h0, w0, int(cfg.data.image_size), int(cfg.data.max_size))
        h, w = int(round(h0 * scale)), int(round(w0 * scale))
        x = image if (h, w) == (h0, w0) else F.interpolate(image[None].float(), size=(h, w), mode="bilinear",
                                                            align_corners=False, antialias=scale < 1)[0]
        batch, _ = collate([(x, {})])
        outputs = model(batch)
        pred = model.postprocess(outputs, model.anchors(batch), torch.tensor([[h, w]]))[0]
        keep = pred["scores"] >= score_thresh
        boxes = pred["boxes"][keep] / torch.tensor([w / w0, h / h0] * 2)
        scores, labels = pred["scores"][keep], pred["labels"][keep]
        text = [f"{names[int(c)]} {float(s):.2f}" for c, s in zip(labels, scores)]
        drawn = draw_bounding_boxes(image, boxes, labels=text, colors=[COLORS[int(c) % len(COLORS)] for c in labels],
                                    width=2) if len(boxes) else image
        png = out_dir / f"{path.stem}.png"
        from PIL import Image

        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(png)
        for b, s, c in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            detections.append({"file": str(path), "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                               "category": names[int(c)], "score": s})
        print(f"{path}: {int(keep.sum())} detections >= {score_thresh} -> {png}")
    (out_dir / "detections.json").write_text(json.dumps(detections, indent=1) + "\n")
    return detections


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m focalbench.predict", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("run_dir", help="the folder a training run wrote (holds .hydra/ and its weights)")
    p.add_argument("inputs", nargs="+", help="image files, then any config overrides (key=value)")
    p.add_argument("--out", default="predictions", help="output folder (default: predictions/)")
    p.add_argument("--weights", help="model.pt or a Lightning .ckpt (default: the run's own)")
    p.add_argument("--score-thresh", type=float, default=0.3, help="draw detections at or above this score")
    args = p.parse_args(argv)
    overrides = [a for a in args.inputs if "=" in a and not Path(a).exists()]
    images = [a for a in args.inputs if a not in overrides]
    missing = [a for a in images if not Path(a).is_file()]
    if missing:
        print(f"error: {missing[0]}: no such image file", file=sys.stderr)
        return 2
    if not images:
        print("error: give at least one image file", file=sys.stderr)
        return 2
    try:
        predict(args.run_dir, images, args.out, overrides, args.weights, args.score_thresh)
    except ConfigError as e:
        exit_config_error(e)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
