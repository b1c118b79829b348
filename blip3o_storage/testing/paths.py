"""Where the source checkout is (tools/, configs/): the tests run its scripts and read its configs."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS = REPO_ROOT / "tools"
CONFIGS = REPO_ROOT / "configs"
