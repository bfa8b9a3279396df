"""Focal loss beyond detection: binary / one-vs-rest classification with a controlled imbalance ratio.

``python -m focalbench.classify [overrides]`` trains one run; ``python -m focalbench.classify.study``
runs the 1:1 .. 1:10,000 imbalance study (sweeps/imbalance.yaml) and writes results/<profile>/imbalance/.
"""
