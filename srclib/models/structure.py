"""Structured pruning checkpoints (method.md 9): which attention units and MLP channels a model
keeps, applied in place, saved beside the checkpoint and loaded back.

Units (method.md 9): an attention unit is a KV group g, i.e. KV head g with its n_rep = n_heads /
n_kv_heads query heads g*n_rep .. (g+1)*n_rep - 1 (Llama's ``repeat_kv`` and TinyBlock's
``repeat_interleave`` both map query head h to KV head h // n_rep). Its parameters: rows
[g*n_rep*hd, (g+1)*n_rep*hd) of q, rows [g*hd, (g+1)*hd) of k and v (q/k/v biases with their rows),
the same input columns of o as q's rows. An MLP unit is an intermediate channel j: row j of gate and
of up (biases with them), input column j of down. Roles come from ``adapter.roles``.

Two forms of a pruned model, same function (same logits):
* masked: every matrix keeps its shape; removed rows/columns are zero; the compensation biases
  (FLAP, method.md 9) are added to o / down (created where the linear has none).
* compact: each affected linear is replaced by a smaller dense nn.Linear holding the kept slices;
  the adapter's ``set_block_heads`` tells the block's forward its new head counts.

On disk (``save_structure``): ``structure.safetensors`` beside the weights, with the keep masks
(uint8, 1 = kept) and the compensation biases; the marker (``write_marker(..., structure=
structure_record(...))``) says which form the weights are in. ``srclib.models.load`` sends a folder
whose marker has a ``structure`` entry through ``load_structured``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from srclib.files import atomic_path
from srclib.models.base import STRUCTURED_FORMS, Adapter
from srclib.models.hf_causal import load_options

__all__ = [
    "STRUCTURE_FILE", "ROLES", "HeadLayout", "Structure", "head_layout", "block_linears", "apply_masked",
    "apply_compact", "structure_record", "save_structure", "load_structure", "load_structured",
]

log = logging.getLogger(__name__)

STRUCTURE_FILE = "structure.safetensors"
ROLES = ("q", "k", "v", "o", "gate", "up", "down")
BIAS_ROLES = ("o", "down")  # the linears whose removed input channels get a compensation bias
_BIAS_KEY = re.compile(r"^(\d+)\.(o|down)$")


@dataclass(frozen=True)
class HeadLayout:
    """A model's dense attention layout: query heads, KV heads, head dimension (features)."""

    n_heads: int
    n_kv_heads: int
    head_dim: int

    def __post_init__(self) -> None:
        for name in ("n_heads", "n_kv_heads", "head_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"HeadLayout.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"HeadLayout.n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})"
            )

    @property
    def n_rep(self) -> int:
        """Query heads per KV head (1 without GQA)."""
        return self.n_heads // self.n_kv_heads


@dataclass
class Structure:
    """What a structured-pruned model keeps, per transformer block.

    heads: per block, bool (n_kv_heads,): True = KV group kept.
    channels: per block, bool (intermediate,): True = MLP channel kept.
    bias: "<block index>.o" / "<block index>.down" -> (d_model,) float compensation bias, added to
        that linear's output (FLAP: V[:, R] mu_R over the removed input channels R).
    """

    heads: list[Tensor]
    channels: list[Tensor]
    bias: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.heads) != len(self.channels):
            raise ValueError(
                f"Structure: heads has {len(self.heads)} blocks but channels has {len(self.channels)}; "
                f"they must describe the same blocks"
            )
        if not self.heads:
            raise ValueError("Structure: heads and channels must describe at least one block")
        for name, masks in (("heads", self.heads), ("channels", self.channels)):
            for i, m in enumerate(masks):
                if not isinstance(m, Tensor) or m.dtype != torch.bool or m.dim() != 1:
                    got = f"{m.dtype} {tuple(m.shape)}" if isinstance(m, Tensor) else type(m).__name__
                    raise ValueError(f"Structure.{name}[{i}] must be a 1-D bool tensor (True = kept), got {got}")
                if not bool(m.any()):
                    unit = "KV group (head)" if name == "heads" else "MLP channel"
                    raise ValueError(f"Structure.{name}[{i}] keeps no {unit}: every block must keep at least one")
        for key, b in self.bias.items():
            match = _BIAS_KEY.match(key)
            if match is None or int(match.group(1)) >= len(self.heads):
                raise ValueError(
                    f"Structure.bias key {key!r} must be '<block index>.o' or '<block index>.down' with "
                    f"block index < {len(self.heads)}"
                )
            if not isinstance(b, Tensor) or not b.is_floating_point() or b.dim() != 1:
                raise ValueError(f"Structure.bias[{key!r}] must be a 1-D float tensor (d_model,)")

    @property
    def n_blocks(self) -> int:
        return len(self.heads)


# ---- layout -------------------------------------------------------------------------------------
def _missing_metadata(adapter: Adapter, what: str) -> ValueError:
    return ValueError(
        f"model {adapter.key} has no head metadata ({what}): structured pruning needs the adapter roles "
        f"{list(ROLES)} and a config with n_heads/n_kv_heads/d_model (tiny, LLaDA) or "
        f"num_attention_heads/num_key_value_heads/head_dim|hidden_size (transformers)"
    )


def head_layout(adapter: Adapter, model: nn.Module) -> HeadLayout:
    """The dense head layout from the model's config.

    Tiny / LLaDA remote configs: n_heads, n_kv_heads (None: 1 with multi_query_attention, else
    n_heads), head_dim = (d_model or hidden_size) // n_heads. transformers configs:
    num_attention_heads, num_key_value_heads (None: num_attention_heads), head_dim (None:
    hidden_size // num_attention_heads). ValueError when the adapter lacks one of the seven roles or
    the config has none of these.
    """
    roles = getattr(adapter, "roles", None) or {}
    missing = [r for r in ROLES if r not in roles]
    if missing:
        raise _missing_metadata(adapter, f"adapter roles lack {missing}")
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise _missing_metadata(adapter, f"{type(model).__name__} has no config")
    if getattr(cfg, "n_heads", None):
        n_heads = int(cfg.n_heads)
        n_kv = getattr(cfg, "n_kv_heads", None)
        if n_kv is None:
            n_kv = 1 if getattr(cfg, "multi_query_attention", False) else n_heads
        d = getattr(cfg, "d_model", None) or getattr(cfg, "hidden_size", None)
        if not d:
            raise _missing_metadata(adapter, "config has n_heads but neither d_model nor hidden_size")
        return HeadLayout(n_heads, int(n_kv), int(d) // n_heads)
    if getattr(cfg, "num_attention_heads", None):
        n_heads = int(cfg.num_attention_heads)
        n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
        hd = getattr(cfg, "head_dim", None)
        if not hd:
            d = getattr(cfg, "hidden_size", None)
            if not d:
                raise _missing_metadata(adapter, "config has num_attention_heads but neither head_dim nor hidden_size")
            hd = int(d) // n_heads
        return HeadLayout(n_heads, int(n_kv), int(hd))
    raise _missing_metadata(adapter, f"config {type(cfg).__name__} has neither n_heads nor num_attention_heads")


def block_linears(adapter: Adapter, block: nn.Module) -> dict[str, nn.Linear]:
    """role (q, k, v, o, gate, up, down) -> the block's nn.Linear, from ``adapter.roles``."""
    roles = getattr(adapter, "roles", None) or {}
    out: dict[str, nn.Linear] = {}
    for role in ROLES:
        name = roles.get(role)
        if name is None:
            raise ValueError(
                f"adapter {adapter.key!r} has no {role!r} role (roles: {sorted(roles)}); structured "
                f"pruning needs {list(ROLES)}"
            )
        try:
            mod = block.get_submodule(name)
        except AttributeError as exc:
            raise ValueError(f"{adapter.key!r}: role {role!r} names {name!r}, which the block lacks") from exc
        if not isinstance(mod, nn.Linear):
            raise ValueError(f"{adapter.key!r}: role {role!r} ({name}) is {type(mod).__name__}, not nn.Linear")
        out[role] = mod
    return out


def _blocks_and_linears(model: nn.Module, adapter: Adapter, structure: Structure, layout: HeadLayout):
    """Every block's linears, after checking that they have the dense shapes ``structure`` expects."""
    blocks = adapter.blocks(model)
    if len(blocks) != structure.n_blocks:
        raise ValueError(f"structure has {structure.n_blocks} blocks, model {adapter.key!r} has {len(blocks)}")
    hd, n_q, n_kv = layout.head_dim, layout.n_heads, layout.n_kv_heads
    out = []
    for i, block in enumerate(blocks):
        lin = block_linears(adapter, block)
        heads, channels = structure.heads[i], structure.channels[i]
        checks = {
            "heads mask length": (heads.numel(), n_kv),
            "q rows": (lin["q"].out_features, n_q * hd),
            "k rows": (lin["k"].out_features, n_kv * hd),
            "v rows": (lin["v"].out_features, n_kv * hd),
            "o columns": (lin["o"].in_features, n_q * hd),
            "gate rows": (lin["gate"].out_features, channels.numel()),
            "up rows": (lin["up"].out_features, channels.numel()),
            "down columns": (lin["down"].in_features, channels.numel()),
        }
        for role in BIAS_ROLES:
            b = structure.bias.get(f"{i}.{role}")
            if b is not None:
                checks[f"{role} bias length"] = (b.numel(), lin[role].out_features)
        for what, (got, want) in checks.items():
            if got != want:
                raise ValueError(
                    f"block {i} of {adapter.key!r}: {what} is {got}, the dense layout (n_heads {n_q}, "
                    f"n_kv_heads {n_kv}, head_dim {hd}, intermediate {channels.numel()}) needs {want} "
                    f"(is the structure already applied?)"
                )
        out.append((block, lin))
    return out


# ---- applying a structure -----------------------------------------------------------------------
def _unit_mask(keep: Tensor, width: int, device) -> Tensor:
    """(units,) bool -> (units * width,) bool: each unit's ``width`` consecutive rows/columns."""
    return keep.to(device).repeat_interleave(width)


def _add_bias(linear: nn.Linear, b: Tensor) -> None:
    w = linear.weight
    b = b.detach().to(device=w.device, dtype=w.dtype)
    if linear.bias is None:
        linear.bias = nn.Parameter(b.clone(), requires_grad=w.requires_grad)
    else:
        linear.bias.add_(b)


@torch.no_grad()
def apply_masked(model: nn.Module, adapter: Adapter, structure: Structure) -> None:
    """Zero the removed units in place and add the compensation biases; shapes unchanged.

    Removed KV group g: q rows (and q bias) [g*n_rep*hd, (g+1)*n_rep*hd), k/v rows (and biases)
    [g*hd, (g+1)*hd), o columns [g*n_rep*hd, (g+1)*n_rep*hd). Removed channel j: gate/up row j (and
    biases), down column j. ``structure.bias`` is added to o / down (a bias Parameter is created
    where the linear has none, same dtype and device as its weight).
    """
    layout = head_layout(adapter, model)
    for i, (_block, lin) in enumerate(_blocks_and_linears(model, adapter, structure, layout)):
        dev = lin["q"].weight.device
        q_off = ~_unit_mask(structure.heads[i], layout.n_rep * layout.head_dim, dev)
        kv_off = ~_unit_mask(structure.heads[i], layout.head_dim, dev)
        c_off = ~_unit_mask(structure.channels[i], 1, dev)
        for role, off in (("q", q_off), ("k", kv_off), ("v", kv_off), ("gate", c_off), ("up", c_off)):
            lin[role].weight[off.to(lin[role].weight.device)] = 0
            if lin[role].bias is not None:
                lin[role].bias[off.to(lin[role].bias.device)] = 0
        lin["o"].weight[:, q_off.to(lin["o"].weight.device)] = 0
        lin["down"].weight[:, c_off.to(lin["down"].weight.device)] = 0
        for role in BIAS_ROLES:
            if f"{i}.{role}" in structure.bias:
                _add_bias(lin[role], structure.bias[f"{i}.{role}"])
    log.info("applied a masked structure to %s (%d blocks)", adapter.key, structure.n_blocks)


def _sliced(linear: nn.Linear, rows: Tensor | None = None, cols: Tensor | None = None,
            extra_bias: Tensor | None = None) -> nn.Linear:
    """A new nn.Linear with ``linear``'s kept rows (and their bias) / kept input columns, plus an
    optional bias added to the output; same dtype, device, requires_grad, training flag."""
    w = linear.weight
    new_w = w.detach()
    if rows is not None:
        new_w = new_w.index_select(0, rows.to(w.device))
    if cols is not None:
        new_w = new_w.index_select(1, cols.to(w.device))
    b = None if linear.bias is None else linear.bias.detach()
    if b is not None and rows is not None:
        b = b.index_select(0, rows.to(b.device))
    if extra_bias is not None:
        eb = extra_bias.detach().to(device=w.device, dtype=w.dtype)
        b = eb if b is None else b + eb
    new = nn.Linear(new_w.shape[1], new_w.shape[0], bias=b is not None, device="meta")  # no init cost
    new.weight = nn.Parameter(new_w.clone().contiguous(), requires_grad=w.requires_grad)
    if b is not None:
        new.bias = nn.Parameter(b.clone().contiguous(), requires_grad=w.requires_grad)
    return new.train(linear.training)


def _replace(block: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = block.get_submodule(parent_name) if parent_name else block
    setattr(parent, leaf, new)


@torch.no_grad()
def apply_compact(model: nn.Module, adapter: Adapter, structure: Structure) -> None:
    """Replace each block's q/k/v/o/gate/up/down by smaller dense linears holding the kept units.

    Shapes after: q (n_kept*n_rep*hd, d), k/v (n_kept*hd, d), o (d, n_kept*n_rep*hd), gate/up
    (c_kept, d), down (d, c_kept); q/k/v/gate/up biases sliced with their rows, o/down biases
    (created if absent) plus ``structure.bias``. Then ``adapter.set_block_heads(block,
    n_kept*n_rep, n_kept)``. Same logits as ``apply_masked`` with the same structure.
    """
    layout = head_layout(adapter, model)
    pairs = _blocks_and_linears(model, adapter, structure, layout)  # every block checked first
    roles = adapter.roles
    for i, (block, lin) in enumerate(pairs):
        heads, channels = structure.heads[i], structure.channels[i]
        q_idx = _unit_mask(heads, layout.n_rep * layout.head_dim, "cpu").nonzero().flatten()
        kv_idx = _unit_mask(heads, layout.head_dim, "cpu").nonzero().flatten()
        c_idx = channels.cpu().nonzero().flatten()
        new = {
            "q": _sliced(lin["q"], rows=q_idx),
            "k": _sliced(lin["k"], rows=kv_idx),
            "v": _sliced(lin["v"], rows=kv_idx),
            "o": _sliced(lin["o"], cols=q_idx, extra_bias=structure.bias.get(f"{i}.o")),
            "gate": _sliced(lin["gate"], rows=c_idx),
            "up": _sliced(lin["up"], rows=c_idx),
            "down": _sliced(lin["down"], cols=c_idx, extra_bias=structure.bias.get(f"{i}.down")),
        }
        for role, mod in new.items():
            _replace(block, roles[role], mod)
        n_kv = int(heads.sum())
        adapter.set_block_heads(block, n_kv * layout.n_rep, n_kv)
    log.info("applied a compact structure to %s (%d blocks)", adapter.key, structure.n_blocks)


# ---- records and files --------------------------------------------------------------------------
def structure_record(structure: Structure, layout: HeadLayout, form: str) -> dict[str, Any]:
    """The marker's ``structure`` entry (JSON-able): form, head_dim, n_rep and per block the kept
    KV groups, query heads and MLP channels, plus the sorted compensation-bias keys."""
    if form not in STRUCTURED_FORMS:
        raise ValueError(f"form must be one of {list(STRUCTURED_FORMS)}, got {form!r}")
    kv = [int(h.sum()) for h in structure.heads]
    return {
        "form": form,
        "head_dim": int(layout.head_dim),
        "n_rep": int(layout.n_rep),
        "kv_groups": kv,
        "query_heads": [k * int(layout.n_rep) for k in kv],
        "intermediate": [int(c.sum()) for c in structure.channels],
        "bias": sorted(structure.bias),
    }


def save_structure(folder: str | Path, structure: Structure) -> Path:
    """Write ``folder``/structure.safetensors: ``heads.<i>`` / ``channels.<i>`` keep masks (uint8,
    1 = kept) and ``bias.<i>.<o|down>`` compensation biases (float32), keys sorted; atomic."""
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    for i, (h, c) in enumerate(zip(structure.heads, structure.channels)):
        tensors[f"heads.{i}"] = h.detach().cpu().to(torch.uint8).contiguous()
        tensors[f"channels.{i}"] = c.detach().cpu().to(torch.uint8).contiguous()
    for key, b in structure.bias.items():
        tensors[f"bias.{key}"] = b.detach().cpu().to(torch.float32).contiguous()
    path = Path(folder) / STRUCTURE_FILE
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(dict(sorted(tensors.items())), str(tmp), metadata={"format": "pt"})
    return path


def load_structure(folder: str | Path) -> Structure:
    """The Structure saved by ``save_structure`` in ``folder`` (masks back to bool)."""
    from safetensors.torch import load_file

    path = Path(folder) / STRUCTURE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a structured checkpoint keeps its masks there (save_structure)")
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise ValueError(f"could not read {path}: {exc}") from exc
    heads: dict[int, Tensor] = {}
    channels: dict[int, Tensor] = {}
    bias: dict[str, Tensor] = {}
    for key, t in tensors.items():
        kind, _, rest = key.partition(".")
        if kind in ("heads", "channels") and rest.isdigit():
            (heads if kind == "heads" else channels)[int(rest)] = t.bool()
        elif kind == "bias":
            bias[rest] = t.float()
        else:
            raise ValueError(f"{path}: unexpected tensor {key!r} (heads.<i>, channels.<i>, bias.<i>.<o|down>)")
    n = len(heads)
    if sorted(heads) != list(range(n)) or sorted(channels) != list(range(n)):
        raise ValueError(f"{path}: heads blocks {sorted(heads)} and channels blocks {sorted(channels)} "
                         f"must both be 0..n-1")
    try:
        return Structure(heads=[heads[i] for i in range(n)], channels=[channels[i] for i in range(n)], bias=bias)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _check_record(structure: Structure, record: dict[str, Any], layout: HeadLayout | None) -> None:
    expected = structure_record(structure, layout or HeadLayout(1, 1, 1), str(record.get("form")))
    keys = ("kv_groups", "intermediate", "bias") + (("head_dim", "n_rep", "query_heads") if layout else ())
    for key in keys:
        if record.get(key) != expected[key]:
            raise ValueError(f"marker structure {key} = {record.get(key)} but {STRUCTURE_FILE} / the config "
                             f"give {expected[key]}")


def _folder_state_dict(folder: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{folder} has no model.safetensors (nor model.safetensors.index.json)")
    state: dict[str, Tensor] = {}
    for name in files:
        state.update(load_file(str(folder / name)))
    return state


def _load_compact_state(model: nn.Module, state: dict[str, Tensor], folder: Path) -> None:
    """Strict load, except keys whose parameter is the input embedding (tied heads, not saved)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    emb = model.get_input_embeddings().weight if hasattr(model, "get_input_embeddings") else None
    params = model.state_dict(keep_vars=True)
    tied = {k for k in missing if emb is not None and params[k] is emb}
    if set(missing) - tied or unexpected:
        raise ValueError(f"the weights in {folder} do not fit the compact model: missing "
                         f"{sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()


def load_structured(adapter: Adapter, folder: str | Path, record: dict[str, Any], **overrides: Any):
    """(model in eval mode, tokenizer or None) from a structured checkpoint folder.

    record: the marker's ``structure`` entry. "compact": ``adapter.skeleton(folder, dtype)``,
    ``apply_compact`` with the saved masks (the skeleton's weights are placeholders), then the
    folder's safetensors state dict (strict except keys tied to the input embedding), moved to
    ``device``. Overrides: ``dtype``, ``device`` only. "masked": ``adapter.load(folder,
    **overrides)``, then the compensation biases of structure.safetensors are attached to the o /
    down linears that loaded without a bias (a linear that has one loaded the saved value, which
    already includes the compensation). Any failure: RuntimeError naming the folder.
    """
    folder = Path(folder)
    form = record.get("form") if isinstance(record, dict) else None
    try:
        if form not in STRUCTURED_FORMS:
            raise ValueError(f"marker structure form must be one of {list(STRUCTURED_FORMS)}, got {form!r}")
        structure = load_structure(folder)
        _check_record(structure, record, None)
        if form == "masked":
            model, tok = adapter.load(folder, **overrides)
            _check_record(structure, record, head_layout(adapter, model))
            blocks = adapter.blocks(model)
            if len(blocks) != structure.n_blocks:
                raise ValueError(f"structure has {structure.n_blocks} blocks, the model has {len(blocks)}")
            with torch.no_grad():
                for key, b in sorted(structure.bias.items()):
                    i, role = key.split(".")
                    lin = block_linears(adapter, blocks[int(i)])[role]
                    if lin.bias is None:
                        _add_bias(lin, b)
            log.info("loaded masked structured %s from %s", adapter.key, folder)
            return model, tok
        dtype, device, rest = load_options(overrides, getattr(adapter, "dtype", "float32"))
        if rest:
            raise ValueError(f"a compact checkpoint takes only the dtype and device overrides, got {sorted(rest)}")
        model = adapter.skeleton(folder, dtype)
        _check_record(structure, record, head_layout(adapter, model))
        apply_compact(model, adapter, structure)
        _load_compact_state(model, _folder_state_dict(folder), folder)
        if device is not None:
            model = model.to(device)
        tok = adapter.folder_tokenizer(folder)
        log.info("loaded compact structured %s from %s (%s)", adapter.key, folder, dtype)
        return model.eval(), tok
    except Exception as exc:
        raise RuntimeError(
            f"could not load the structured ({form}) checkpoint of {adapter.key!r} from {folder}: {exc}"
        ) from exc
