"""Data: built-in COCO-format datasets (``shapes``, ``digits``) and the COCO ``LightningDataModule``.

``python -m focalbench.data build NAME`` generates a built-in set; ``CocoDataModule`` reads any
COCO-format set. ``CocoDataModule`` is imported lazily so that building data does not import Lightning.
"""

from focalbench.data.build import build_dataset
from focalbench.data.errors import DataError

__all__ = ["CocoDataModule", "DataError", "build_dataset"]


def __getattr__(name):
    if name == "CocoDataModule":
        from focalbench.data.datamodule import CocoDataModule

        return CocoDataModule
    raise AttributeError(f"module 'focalbench.data' has no attribute {name!r}")
