"""``python -m focalbench.data build NAME [--root data] [--seed S] [--train N] [--val M] [--size PX] [--stretch S]``."""

from __future__ import annotations

import argparse
import os
import sys
import time

from focalbench.data.build import GENERATORS, build_dataset, summary
from focalbench.data.errors import DataError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m focalbench.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="generate a built-in dataset into ROOT/NAME in COCO format")
    b.add_argument("name", choices=sorted(GENERATORS))
    b.add_argument("--root", default="data", help="parent folder (default: data); writes ROOT/NAME")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--train", type=int, default=None, help="training images (default 2000)")
    b.add_argument("--val", type=int, default=None, help="validation images (default 300)")
    b.add_argument("--size", type=int, default=None, help="image side in px (default 128)")
    b.add_argument("--stretch", type=float, default=None,
                   help="digits only: spread of the boxes' aspect ratios, >= 1 (default 1: the digits' own)")
    b.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    args = parser.parse_args(argv)

    from focalbench.config_schema import ConfigError, check_output_dir, os_error_line

    out = os.path.join(args.root, args.name)
    start = time.perf_counter()
    try:
        check_output_dir(args.root, "--root")  # an unwritable folder: one line, before any image is drawn
        stats = build_dataset(args.name, out, seed=args.seed, train=args.train, val=args.val, size=args.size,
                              workers=args.workers,
                              **({} if args.stretch is None else {"stretch": args.stretch}))
    except (DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. the disk filled up while writing: build_dataset has removed its temporary folder
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 1
    for line in summary(stats):
        print(line)
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
