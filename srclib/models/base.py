"""The adapter contract: everything the study needs to know about a model family.

An adapter knows how to load (model, tokenizer), where the transformer blocks are, which
nn.Linear layers are prunable, the mask token id, whether attention is causal and whether the
logits are shifted (Dream-style: the output at position i-1 predicts token i).  Library code
never inspects a model's class or name: it asks the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from srclib.files import read_json_checked, write_json

__all__ = ["Adapter", "MARKER", "STRUCTURED_FORMS", "WEIGHTS", "write_marker", "read_marker", "local_source",
           "marker_labels"]

MARKER = "srclib_model.json"  # written beside every checkpoint srclib saves
# a pruned checkpoint's masks (uint8, 1 = pruned): written by prune, checked by evaluate
MASKS_FILE = "masks.safetensors"
STRUCTURED_FORMS = ("compact", "masked")  # Adapter.structured_form values (srclib.models.structure)
WEIGHTS = ("trained", "random")  # the marker's optional ``weights`` label (absent: trained)
LOCAL_PREFIXES = ("models/", "./", "../", "/", "~")  # a source spelled like this is a folder, never a hub id


def local_source(source: str | Path, root: str | Path | None = None) -> Path | None:
    """The local folder a registry ``source`` names, or None when it is a hub id.

    A source is a folder when it is absolute, starts with ``models/``, ``./``, ``../`` or ``~``, or
    names an existing folder relative to the repository root; folders are resolved against the
    repository root (``srclib.paths.ROOT``), never against the working directory, so a key loads the
    same checkpoint from anywhere. Anything else (``org/name``) is a Hugging Face hub id."""
    from srclib import paths

    base = Path(root) if root is not None else paths.ROOT
    text = str(source)
    if text.startswith("~"):
        return Path(text).expanduser()
    candidate = Path(text) if Path(text).is_absolute() else base / text
    if text.startswith(LOCAL_PREFIXES) or Path(text).is_absolute() or candidate.is_dir():
        return candidate
    return None


@dataclass(frozen=True)
class Adapter:
    """Base adapter. Subclasses override ``load`` and, where the layout differs, ``blocks``.

    key: registry key (params.yaml ``models:`` entry of the same name).
    causal: attention is causal (AR model) rather than bidirectional (DLM).
    shift: logits are shifted (output at i-1 predicts token i); position 0 is never masked.
    blocks_path: dotted attribute path from the loaded model to its nn.ModuleList of blocks.
    source: default checkpoint location (a repo-relative folder or a hub id).
    """

    key: str
    causal: bool
    shift: bool
    blocks_path: str
    source: str = ""
    revision: str | None = None
    trust_remote_code: bool = False
    mask_token_id: int | None = None  # None: read from the loaded config/tokenizer
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # role (q, k, v, o, gate, up, down) -> qualified nn.Linear name inside one block; families
    # set it (structured pruning, srclib.models.structure, needs all seven)
    roles: dict[str, str] = field(default_factory=dict)
    # how a structured (head / channel) pruned checkpoint of this family is saved (method.md 9):
    # "compact" (smaller dense matrices, per-block head counts) or "masked" (full shapes, removed
    # units zeroed, compensation biases attached at load)
    structured_form: str = "compact"

    def __post_init__(self) -> None:
        if self.structured_form not in STRUCTURED_FORMS:
            raise ValueError(
                f"structured_form must be one of {list(STRUCTURED_FORMS)}, got {self.structured_form!r} "
                f"(adapter {self.key!r})"
            )

    # ---- loading ------------------------------------------------------------------------------
    def load(self, source: str | Path | None = None, **overrides: Any):
        """Return (model, tokenizer) in eval mode. Subclasses implement."""
        raise NotImplementedError(f"adapter {type(self).__name__} for {self.key!r} has no load()")

    def skeleton(self, folder: str | Path, dtype: torch.dtype) -> nn.Module:
        """A model built from the config in ``folder`` without loading its weights (the compact
        structured checkpoints load their state dict into it). Subclasses implement."""
        raise NotImplementedError(f"adapter {type(self).__name__} for {self.key!r} has no skeleton()")

    def folder_tokenizer(self, folder: str | Path):
        """The tokenizer saved in a local checkpoint folder, or None (default: none)."""
        return None

    # ---- layout -------------------------------------------------------------------------------
    def set_block_heads(self, block: nn.Module, n_heads: int, n_kv: int) -> None:
        """Tell one block's forward that it now has ``n_heads`` query and ``n_kv`` KV heads (after
        srclib.models.structure.apply_compact removed whole KV groups).

        Default: nothing to do. Stock transformers Llama / Qwen2 attention reshapes q/k/v with
        ``view(..., -1, head_dim)``, the output with ``reshape(..., -1)``, and repeats KV heads by
        ``num_key_value_groups = n_heads / n_kv``; removing whole KV groups keeps that ratio, so the
        smaller projections alone carry the new counts (tests/test_structured_compact.py checks
        that compact and masked models give the same logits).
        """
        return None

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        obj: Any = model
        for part in self.blocks_path.split("."):
            if not hasattr(obj, part):
                raise AttributeError(
                    f"model for {self.key!r} has no attribute path {self.blocks_path!r} "
                    f"(missing {part!r} on {type(obj).__name__})"
                )
            obj = getattr(obj, part)
        if not isinstance(obj, nn.ModuleList):
            raise TypeError(f"{self.key!r}: {self.blocks_path} is {type(obj).__name__}, not ModuleList")
        return obj

    def prunable(self, block: nn.Module) -> dict[str, nn.Linear]:
        """Every nn.Linear inside a transformer block, by qualified name (method.md 4)."""
        return {name: mod for name, mod in block.named_modules() if isinstance(mod, nn.Linear)}

    def mask_id(self, model: nn.Module) -> int | None:
        """The [MASK] token id, or None for an AR model."""
        if self.causal:
            return None
        if self.mask_token_id is not None:
            return int(self.mask_token_id)
        mid = getattr(model.config, "mask_token_id", None)
        if mid is None:
            raise ValueError(f"model {self.key!r} declares no mask_token_id in its config or adapter")
        return int(mid)

    def align_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Return logits whose position i predicts token i.

        Unshifted (LLaDA-style) models already do. Shifted models (Dream, tiny-dlm) predict token i
        at output i-1: we move every row one step right; row 0 repeats itself, and position 0 is
        never masked by the sampler, the noising or the likelihood, so it is never read.
        """
        # logits: (B, T, V)
        if not self.shift:
            return logits
        return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)

    def logits(self, model: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """Aligned logits (B, T, V) for ids (B, T)."""
        out = model(input_ids=ids, attention_mask=attention_mask)
        logits = out.logits if hasattr(out, "logits") else out[0]
        return self.align_logits(logits)


def write_marker(folder: str | Path, key: str, **info: Any) -> Path:
    """Record which adapter a saved checkpoint belongs to (read back by srclib.models.load).

    Optional labels the reports read (``marker_labels``): ``weights`` ("trained" | "random": a
    checkpoint never trained, e.g. built from a config) and ``kind`` ("dlm" | "ar"); ``adapter``: the
    params.yaml definition of a model that is not in the built-in registry (family, source, ...), so
    the folder loads in any process."""
    if "weights" in info and info["weights"] not in WEIGHTS:
        raise ValueError(f"marker weights = {info['weights']!r}: must be one of {list(WEIGHTS)}")
    if "kind" in info and info["kind"] not in ("dlm", "ar"):
        raise ValueError(f"marker kind = {info['kind']!r}: must be 'dlm' or 'ar'")
    return write_json(Path(folder) / MARKER, {"key": key, **info})


def marker_labels(folder: str | Path | None, causal: bool) -> dict[str, Any]:
    """{"kind": "dlm" | "ar", "random_init": bool} of a checkpoint, from its own marker: ``kind``
    (checked against the adapter's ``causal``, which decides how it samples), ``random_init`` =
    ``weights == "random"``. A
    folder without a marker (a hub id not fetched) is labelled from the adapter: trained."""
    info: dict[str, Any] = {}
    if folder is not None and (Path(folder) / MARKER).is_file():
        info = read_marker(folder)
    kind = "ar" if causal else "dlm"
    if info.get("kind", kind) != kind:
        raise ValueError(f"{Path(folder) / MARKER}: kind {info['kind']!r} disagrees with its adapter "
                         f"(causal={causal}: {kind!r}); fix the marker or the models: entry")
    return {"kind": kind, "random_init": info.get("weights", "trained") == "random"}


def read_marker(folder: str | Path) -> dict[str, Any]:
    """The marker of a srclib checkpoint folder (a JSON object). A missing marker is a
    FileNotFoundError; an unreadable one a ValueError naming the file: rebuild the checkpoint."""
    path = Path(folder) / MARKER
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} is not a srclib checkpoint (no {MARKER}); pass a model key from params.yaml "
            f"or a folder written by srclib"
        )
    return read_json_checked(path, holds="a JSON object (the checkpoint's key and build record)",
                             fix=f"rebuild the checkpoint (rerun the stage that wrote {folder})")
