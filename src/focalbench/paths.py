"""Where the package finds its own files: the Hydra configs and the sweep files.

They ship inside the package (``focalbench/conf``, ``focalbench/conf_classify``, ``focalbench/sweep_files``; in
the source tree these are links to the repository's ``conf/``, ``conf_classify/`` and ``sweeps/``), so an installed wheel finds them from any working
directory. ``FOCALBENCH_CONF`` points the detection app at another config folder.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CONF_DIR = Path(os.environ.get("FOCALBENCH_CONF") or PACKAGE_DIR / "conf")
SWEEPS_DIR = PACKAGE_DIR / "sweep_files"
# the classification app's own groups (data, model, profile): a folder apart, so the detection app's --help
# lists only its own groups; it shares conf/loss/ through its search path
CLASSIFY_CONF_DIR = PACKAGE_DIR / "conf_classify"
