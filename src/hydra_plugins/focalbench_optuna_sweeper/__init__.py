"""focalbench's Optuna (>= 4) sweeper for Hydra: ``hydra/sweeper=optuna``.

The implementation lives in :mod:`focalbench.sweeps`; this package only registers it. Hydra imports
every module under ``hydra_plugins`` at start-up, so nothing here imports Optuna eagerly.
"""
