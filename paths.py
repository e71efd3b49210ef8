"""Where selfstudy finds its configs and data and writes its experiments.

Every path is absolute, because Ray trial processes change their working directory.
`SELFSTUDY_EXP_DIR` and `SELFSTUDY_DATA_DIR` move experiments and data elsewhere
(a bigger disk, a shared cluster volume); both default to folders inside the checkout
that git ignores.
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CONFIG_DIR = ROOT / "config"
EXP_DIR = Path(os.environ.get("SELFSTUDY_EXP_DIR") or ROOT / "exp").expanduser().resolve()
DATA_DIR = Path(os.environ.get("SELFSTUDY_DATA_DIR") or ROOT / "data").expanduser().resolve()
