"""focalbench: reproduce the ablations of Focal Loss for Dense Object Detection."""

__version__ = "0.1.0"
