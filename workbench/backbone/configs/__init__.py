"""open_clip model configs shipped with the workbench (config-as-data)."""
from __future__ import annotations

from pathlib import Path

import open_clip

CONFIG_DIR = Path(__file__).parent
_registered = False


def register_workbench_configs() -> None:
    """Make the workbench's configs (e.g. `wb-tiny-vit`) known to open_clip by name."""
    global _registered
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True
