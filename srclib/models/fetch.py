"""Hub checkpoints as local folders: ``python -m srclib.models fetch KEY ...``.

A registry entry with a hub id (LLaDA, Dream) is downloaded at its pinned revision into
``models/<key>`` with a marker recording the id and revision. From then on ``load(key)`` reads
that folder (``HFAdapter.default_source``), so a prune or evaluate stage depends on a real folder
(dvc.yaml: ``models/<model>``) whose hash changes exactly when the checkpoint does.
"""

from __future__ import annotations

import logging
from pathlib import Path

from srclib import paths
from srclib.files import atomic_dir
from srclib.models import definition  # the params definition of a model defined in params.yaml
from srclib.models.base import Adapter, write_marker

__all__ = ["fetch"]

log = logging.getLogger(__name__)


def fetch(adapter: Adapter, root: Path | None = None) -> Path:
    """Download ``adapter``'s hub checkpoint at its pinned revision into models/<key> (atomic)."""
    from huggingface_hub import snapshot_download

    if not adapter.source or not adapter.revision:
        raise ValueError(f"model {adapter.key!r} has no hub id with a pinned revision to fetch "
                         f"(source={adapter.source!r}, revision={adapter.revision!r})")
    out = paths.model_dir(adapter.key, root)
    log.info("fetching %s@%s into %s", adapter.source, adapter.revision, out)
    with atomic_dir(out) as tmp:
        snapshot_download(repo_id=adapter.source, revision=adapter.revision, local_dir=str(tmp))
        extra = {"adapter": definition(adapter.key)} if definition(adapter.key) else {}
        write_marker(tmp, adapter.key, source=adapter.source, revision=adapter.revision, fetched=True, **extra)
    return out
