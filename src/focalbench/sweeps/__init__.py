"""Optuna sweeps: the Hydra sweeper's implementation, storages, shared studies, pruning.

- :mod:`.params`: ``hydra.sweeper.params`` syntax -> Optuna distributions; values -> overrides.
- :mod:`.storage`: storage URLs (SQLite / SQLAlchemy / journal file), the creation lock.
- :mod:`.study`: samplers, pruners, one study shared by workers (fixed points, budget, heartbeats).
- :mod:`.sweeper`: the sweeper (``hydra/sweeper=optuna``, plugin in ``hydra_plugins``).
- :mod:`.trial`: the job's side: rebuild its trial from the ``optuna:`` block, report, prune.
- :mod:`.pruning`: ``OptunaPruningCallback``, the Lightning callback (imports Lightning).
"""
