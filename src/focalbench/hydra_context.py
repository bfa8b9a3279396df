"""Hydra's global state for the compose API, the same way for both apps (``train.compose``, ``classify.run``).

Hydra keeps one global context (``GlobalHydra``). A driver that composes configs outside a Hydra app (the
reproduction, the imbalance study, the tests) needs one pointed at the app's config folder; inside the app
(or an ``initialize`` block over that folder) the running one is used as it is, with its search path. A
context over another folder (the other app's, or a user's) is set aside for the block and restored after,
so composing one app's config never destroys the caller's Hydra state.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import hydra
from hydra.core.global_hydra import GlobalHydra

VERSION_BASE = "1.3"


def main_config_dir() -> Path | None:
    """The primary config folder of the initialised Hydra context (None when there is none)."""
    gh = GlobalHydra.instance()
    if not gh.is_initialized():
        return None
    for source in gh.config_loader().get_sources():
        if source.provider == "main" and source.scheme() == "file":
            return Path(source.path).resolve()
    return None


@contextlib.contextmanager
def hydra_context(conf_dir: str | os.PathLike, job_name: str) -> Iterator[None]:
    """A Hydra context over ``conf_dir`` for the block: the running one when it is over that folder, else a
    fresh ``initialize_config_dir`` (any other context is restored afterwards)."""
    conf_dir = Path(conf_dir)
    here = main_config_dir()
    if here is not None and here == conf_dir.resolve():
        yield
        return
    gh = GlobalHydra.instance()
    saved = gh.hydra if gh.is_initialized() else None
    if saved is not None:
        gh.clear()
    try:
        with hydra.initialize_config_dir(config_dir=str(conf_dir), version_base=VERSION_BASE, job_name=job_name):
            yield
    finally:
        if saved is not None:  # (the block's exit may have replaced the singleton: take it afresh)
            now = GlobalHydra.instance()
            now.clear()
            now.initialize(saved)
