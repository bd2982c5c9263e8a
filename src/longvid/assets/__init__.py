"""Files shipped inside the package (the trained tiny default model, needle images)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def default_model_path() -> Path | None:
    """The bundled tiny model, if this install has one."""
    path = HERE / "tiny_model"
    return path if (path / "config.json").is_file() else None
