"""Where the project's config folders live: the repository root (``pip install -e .``).

``METAWM_ROOT`` overrides it, e.g. for a site-wide install with its own ``tasks/`` and ``conf/``.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(os.environ.get("METAWM_ROOT") or Path(__file__).resolve().parent.parent)
CONF = ROOT / "conf"
TASKS = ROOT / "tasks"
SWEEPS = ROOT / "sweeps"
SLURM = ROOT / "slurm"
