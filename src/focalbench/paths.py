"""Where the package finds its own files: the Hydra configs and the sweep files.

Both ship inside the package (``focalbench/conf``, ``focalbench/sweep_files``; in the source tree these are
links to the repository's ``conf/`` and ``sweeps/``), so an installed wheel finds them from any working
directory. ``FOCALBENCH_CONF`` points the detection app at another config folder.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CONF_DIR = Path(os.environ.get("FOCALBENCH_CONF") or PACKAGE_DIR / "conf")
SWEEPS_DIR = PACKAGE_DIR / "sweep_files"
