"""Stand-in checkpoints saved as the real ones are laid out (shared by the model tests)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from srclib.models.base import write_marker


def save_standin(adapter, model, folder: Path, key: str | None = None, **marker: Any) -> Path:
    """Save a stand-in as the real checkpoint would be laid out: remote-code entries get a
    modeling file and an ``auto_map`` (loaded with trust_remote_code, fully offline). The marker
    names ``key`` (default the adapter's) with ``marker`` (default ``standin=True``)."""
    model.save_pretrained(folder, safe_serialization=True)
    if adapter.trust_remote_code:
        cls, cfg_cls = type(model), type(model.config)
        # subclasses, so that transformers' auto-class registration never touches the real classes
        (folder / "modeling_standin.py").write_text(
            f"from {cls.__module__} import {cls.__name__} as _Model\n"
            f"from {cfg_cls.__module__} import {cfg_cls.__name__} as _Config\n\n\n"
            "class StandInConfig(_Config):\n    pass\n\n\n"
            "class StandInModel(_Model):\n    config_class = StandInConfig\n"
        )
        cfg_path = folder / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["auto_map"] = {"AutoConfig": "modeling_standin.StandInConfig",
                           adapter.auto_class: "modeling_standin.StandInModel"}
        cfg_path.write_text(json.dumps(cfg))
    write_marker(folder, key or adapter.key, **(marker or {"standin": True}))
    return folder
