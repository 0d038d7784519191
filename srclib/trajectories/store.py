"""One sink trajectory and its file (method.md 2): the ``Trajectory`` record, its safetensors
storage and the run names (model key, random-init twin).

Storage (``save_trajectory`` / ``load_trajectory``): one safetensors file per run, written
atomically.  Masses are stored as float16 DEVIATIONS from their row mean plus the float32 row
means, because near-uniform masses (random-init models) differ from each other by ~1e-3
relative, below float16's resolution on the raw values: the dominant position must survive the
round trip.  (float32 is used instead if a deviation would overflow float16.)  Tensors:
``mass_dev`` (S, L, B, T), ``mass_mean`` (S, L, B), ``valid_len`` (S,), ``step`` (S,),
``prompt_ids`` (B, P), ``final_ids`` (B, T); DLM: ``step_ids`` (S, B, T); AR: ``prefill_dev``
(L, B, T), ``prefill_mean`` (L, B); per head (format 2, written by collect; optional):
``head_bos_share`` and ``head_top_share`` (S, L, H, B) float32.  Metadata key
``srclib_trajectory`` (``META_KEY``): JSON with the model key, run name, kind, causal, shift,
has_bos, bos/mask ids, random_init, the settings and ``format`` (``FORMAT_VERSION``). It is the
only metadata key, so the file's bytes are the same on every run: safetensors writes its metadata
from a hash map, whose order changes from process to process when there are two keys. Files
written before carry the format under a second key, ``srclib_trajectory_format`` (``FORMAT_KEY``),
which is still read; format-1 files have neither.
``load_trajectory`` / ``check_trajectory_file`` (header only, cheap) refuse a file that is not
one (truncated, overwritten, metadata or a tensor missing or misshapen) or is of another format
(an older collect: rerun it) with ``TrajectoryFileError`` naming it.

Per-head shares (srclib.attention, per_head): at step tau, layer l, head h, prompt b, the head's
attention mass on key 0 per query (``head_bos_share``) and its largest key mass per query
(``head_top_share``; x valid_len[tau] = strength, 1 = uniform). Queries: AR the newest token, DLM
every position.

AR full-prefix mass (``Trajectory.prefix_mass``): attention is causal, so earlier queries' rows
never change and the full-prefix column mass after step tau equals the prefill mass (queries
0 .. P-2) plus the newest-query masses of steps 0 .. tau.  Its per-query normalised version
divides key k by the number of queries that see it, T_tau - k with T_tau = P + tau keys.
Both are biased towards key 0 (every query sees it: a random-init model puts its dominant key
there), so they are NOT evidence of a sink (``BIASED_VARIANTS``). The bias-free
``prefix_expected`` divides key k's raw mass by its expectation under uniform causal attention,
n_h * sum_{q = k}^{T_tau - 1} 1 / (q + 1) with n_h = (raw mass over all keys) / T_tau the mass
one query row carries (the number of heads, as every row sums to 1): 1 everywhere for uniform
causal attention.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from srclib.files import atomic_path
from srclib.paths import RANDOM_SUFFIX  # one home for the run-name convention

__all__ = [
    "Trajectory",
    "save_trajectory",
    "load_trajectory",
    "TrajectoryFileError",
    "check_trajectory_file",
    "random_init_name",
    "META_KEY",
    "FORMAT_VERSION",
    "RANDOM_SUFFIX",
    "PRIMARY_VARIANT",
    "BIASED_VARIANTS",
    "FORMAT_KEY",
]

log = logging.getLogger(__name__)

META_KEY = "srclib_trajectory"
FORMAT_KEY = "srclib_trajectory_format"
FORMAT_VERSION = 2  # 2: per-head shares (head_bos_share, head_top_share)
PRIMARY_VARIANT = {"dlm": "full", "ar": "newest"}  # the paper's statistic for each kind
# variants biased towards key 0 by construction (causal column sums): not evidence of a sink
BIASED_VARIANTS = ("prefix_raw", "prefix_norm")
HEAD_TENSORS = ("head_bos_share", "head_top_share")


def random_init_name(key: str) -> str:
    """Run name of a model's random-init control."""
    return f"{key}{RANDOM_SUFFIX}"


@dataclass
class Trajectory:
    """One run's per-step attention mass.  Shapes: S steps, L layers, B prompts, T = P + gen_length.

    mass: (S, L, B, T) float32.  DLM: key mass of step tau's forward over the whole sequence.
        AR: the newest query's key mass; zero at keys >= valid_len[tau].
    valid_len: (S,) number of keys at each step (DLM: T; AR: P + tau).
    prompt_ids: (B, P); final_ids: (B, T) (AR: the last token is generated but never a key).
    step_ids: (S, B, T) ids the forward saw at each step (DLM only).
    prefill_mass: (L, B, T) key mass of the AR prefill (queries 0 .. P-2; zero if P = 1), AR only.
    head_bos_share, head_top_share: (S, L, H, B) float32 per-head shares (module docstring), or
        None (not recorded).
    meta: JSON-able description (model, run, kind, causal, shift, has_bos, bos_id, mask_id,
        random_init, settings).
    """

    meta: dict[str, Any]
    mass: torch.Tensor
    valid_len: torch.Tensor
    prompt_ids: torch.Tensor
    final_ids: torch.Tensor
    step_ids: torch.Tensor | None = None
    prefill_mass: torch.Tensor | None = None
    head_bos_share: torch.Tensor | None = None
    head_top_share: torch.Tensor | None = None

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.mass.shape)  # type: ignore[return-value]

    @property
    def seq_len(self) -> int:
        return int(self.mass.shape[-1])

    def exists(self) -> torch.Tensor:
        """(S, T) bool: key k exists at step tau."""
        return torch.arange(self.seq_len)[None, :] < self.valid_len[:, None]

    def prefix_mass(self, normalised: bool = False) -> torch.Tensor:
        """AR full-prefix key mass after each step, (S, L, B, T); ``normalised``: per query that sees k."""
        if self.kind != "ar":
            raise ValueError(f"prefix_mass is defined for AR trajectories, this one is {self.kind!r}")
        pre = self.prefill_mass if self.prefill_mass is not None else torch.zeros_like(self.mass[0])
        raw = pre[None] + torch.cumsum(self.mass.double(), dim=0).float()  # (S, L, B, T)
        if not normalised:
            return raw
        k = torch.arange(self.seq_len, dtype=torch.float32)
        count = (self.valid_len[:, None].float() - k[None, :]).clamp_min(0)[:, None, None, :]  # (S, 1, 1, T)
        return torch.where(count > 0, raw / count.clamp_min(1), torch.zeros_like(raw))

    def prefix_expected(self, raw: torch.Tensor | None = None) -> torch.Tensor:
        """AR full-prefix mass over its expectation under uniform causal attention, (S, L, B, T):
        raw_k / (n_h * sum_{q=k}^{T_tau-1} 1/(q+1)), n_h = sum_k raw_k / T_tau (module docstring);
        0 at keys that do not exist. ``raw``: ``prefix_mass(False)`` if already computed."""
        raw = self.prefix_mass(False) if raw is None else raw
        T = self.seq_len
        inv = 1.0 / torch.arange(1, T + 1, dtype=torch.float64)  # 1/(q+1), q = 0..T-1
        tail = torch.flip(torch.cumsum(torch.flip(inv, [0]), 0), [0])  # tail[k] = sum_{q>=k} 1/(q+1)
        n = self.valid_len.to(torch.long)  # (S,) queries (= keys) after each step
        beyond = torch.cat([tail, torch.zeros(1, dtype=torch.float64)])[n]  # (S,) sum_{q>=n} 1/(q+1)
        expect = (tail[None, :] - beyond[:, None]).clamp_min(0)  # (S, T): sum_{q=k}^{n-1} 1/(q+1)
        ex = self.exists()  # (S, T)
        per_row = raw.double().sum(-1) / n.double()[:, None, None]  # (S, L, B): mass per query row
        denom = per_row[..., None] * expect[:, None, None, :]  # (S, L, B, T)
        out = torch.where(ex[:, None, None, :] & (denom > 0), raw.double() / denom.clamp_min(1e-300),
                          torch.zeros_like(denom))
        return out.float()

    @property
    def n_heads(self) -> int | None:
        """H of the per-head shares, None if not recorded."""
        return None if self.head_bos_share is None else int(self.head_bos_share.shape[2])

    def variants(self) -> dict[str, torch.Tensor]:
        """name -> (S, L, B, T) mass of every statistic variant of this kind (AR ``prefix_raw`` and
        ``prefix_norm`` are biased towards key 0: ``BIASED_VARIANTS``)."""
        if self.kind == "dlm":
            return {"full": self.mass}
        raw = self.prefix_mass(False)
        return {"newest": self.mass, "prefix_raw": raw, "prefix_norm": self.prefix_mass(True),
                "prefix_expected": self.prefix_expected(raw)}


# ---- storage: float16 deviations from the row mean -------------------------------------------
F16_MAX = 60000.0


def _encode(m: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., T) mass, (..., T) bool valid -> (deviation from the row mean over valid keys, row mean)."""
    m = m.double()
    n = valid.sum(-1).clamp_min(1)
    mean = (m * valid).sum(-1) / n  # (...)
    dev = torch.where(valid, m - mean[..., None], torch.zeros_like(m))
    dtype = torch.float16 if float(dev.abs().max()) < F16_MAX else torch.float32
    if dtype == torch.float32:
        log.warning("mass deviations exceed float16 range: storing float32")
    return dev.to(dtype), mean.float()


def _decode(dev: torch.Tensor, mean: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    m = dev.float() + mean[..., None].float()
    return torch.where(valid, m, torch.zeros_like(m))


def save_trajectory(traj: Trajectory, path: str | Path) -> Path:
    """Write one trajectory as safetensors (atomic). See the module docstring for the layout."""
    from safetensors.torch import save_file

    S, L, B, T = traj.shape
    ex = traj.exists()  # (S, T)
    dev, mean = _encode(traj.mass, ex[:, None, None, :].expand(S, L, B, T))
    tensors = {
        "mass_dev": dev.contiguous(), "mass_mean": mean.contiguous(),
        "valid_len": traj.valid_len.to(torch.int64).contiguous(),
        "step": torch.arange(S, dtype=torch.int64),
        "prompt_ids": traj.prompt_ids.to(torch.int64).contiguous(),
        "final_ids": traj.final_ids.to(torch.int64).contiguous(),
    }
    if traj.step_ids is not None:
        tensors["step_ids"] = traj.step_ids.to(torch.int64).contiguous()
    if traj.prefill_mass is not None:
        P = traj.prompt_ids.shape[1]
        pv = (torch.arange(T) < P - 1)[None, None, :].expand(L, B, T)
        pdev, pmean = _encode(traj.prefill_mass, pv)
        tensors["prefill_dev"], tensors["prefill_mean"] = pdev.contiguous(), pmean.contiguous()
    heads = [getattr(traj, k) for k in HEAD_TENSORS]
    if (heads[0] is None) != (heads[1] is None):
        raise ValueError("head_bos_share and head_top_share must both be given or both be None")
    if heads[0] is not None:
        for k, h in zip(HEAD_TENSORS, heads):
            if h.dim() != 4 or (h.shape[0], h.shape[1], h.shape[3]) != (S, L, B) or h.shape != heads[0].shape:
                raise ValueError(f"{k} must be (S, L, H, B) = ({S}, {L}, H, {B}), got {tuple(h.shape)}")
            tensors[k] = h.float().contiguous()
    record = {**traj.meta, "format": FORMAT_VERSION}  # the format this function writes
    meta = {META_KEY: json.dumps(record, sort_keys=True)}  # one key: byte-identical files (module docstring)
    path = Path(path)
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


class TrajectoryFileError(ValueError):
    """A trajectory file is unreadable or not what ``save_trajectory`` writes (named in the message)."""


def _corrupt(path: Path, what: str) -> TrajectoryFileError:
    return TrajectoryFileError(
        f"corrupt trajectory file {path}: {what}; delete it and rerun the collect stage "
        f"(dvc repro -f collect), or restore it (dvc checkout trajectories)")


def _check_shapes(path: Path, shapes: dict[str, tuple[int, ...]], kind: str) -> None:
    """Every tensor's shape agrees with ``mass_dev`` (S, L, B, T); else name the tensor."""
    for key in ("mass_dev", "mass_mean", "valid_len", "prompt_ids", "final_ids"):
        if key not in shapes:
            raise _corrupt(path, f"tensor {key!r} is missing (has {sorted(shapes)})")
    if len(shapes["mass_dev"]) != 4:
        raise _corrupt(path, f"mass_dev must be (S, L, B, T), got shape {shapes['mass_dev']}")
    S, L, B, T = shapes["mass_dev"]
    want = {"mass_mean": (S, L, B), "valid_len": (S,), "final_ids": (B, T)}
    if kind == "dlm":
        want["step_ids"] = (S, B, T)
    if "prefill_dev" in shapes:
        want.update(prefill_dev=(L, B, T), prefill_mean=(L, B))
    if any(k in shapes for k in HEAD_TENSORS):
        hb = shapes.get(HEAD_TENSORS[0])
        H = hb[2] if hb is not None and len(hb) == 4 else None
        want.update({k: (S, L, H, B) for k in HEAD_TENSORS})
    for key, shape in want.items():
        if shapes.get(key) != shape:
            raise _corrupt(path, f"tensor {key!r} has shape {shapes.get(key)}, expected {shape} from "
                                 f"mass_dev {(S, L, B, T)}")
    pr = shapes["prompt_ids"]
    if len(pr) != 2 or pr[0] != B or not 0 < pr[1] <= T:
        raise _corrupt(path, f"tensor 'prompt_ids' has shape {pr}, expected ({B}, P) with 0 < P <= {T}")


def _meta(path: Path, md: dict[str, str] | None) -> dict[str, Any]:
    md = md or {}
    if META_KEY not in md:
        raise TrajectoryFileError(f"{path} is not a srclib trajectory (no {META_KEY!r} metadata); "
                                  f"delete it and rerun the collect stage (dvc repro -f collect)")
    try:
        meta = json.loads(md[META_KEY])
    except json.JSONDecodeError as exc:
        raise _corrupt(path, f"metadata {META_KEY!r} is not JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("kind") not in PRIMARY_VARIANT:
        kind = meta.get("kind") if isinstance(meta, dict) else meta
        raise _corrupt(path, f"metadata {META_KEY!r} kind = {kind!r}, expected one of {sorted(PRIMARY_VARIANT)}")
    return meta


def _read(path: Path, tensors: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(meta, {name: tensor}) or, without ``tensors``, (meta, {name: shape}) from the header alone."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise FileNotFoundError(f"trajectory file not found: {path} (run the collect stage)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            fmd = fh.metadata() or {}
            meta = _meta(path, fmd)
            if tensors:
                out = {k: fh.get_tensor(k) for k in fh.keys()}
            else:
                out = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except SafetensorError as exc:  # truncated, empty, overwritten: the header does not parse
        raise _corrupt(path, f"not a readable safetensors file ({exc})") from exc
    except (OSError, RuntimeError) as exc:
        raise _corrupt(path, f"cannot read its tensors ({type(exc).__name__}: {exc})") from exc
    shapes = {k: tuple(v.shape) for k, v in out.items()} if tensors else out
    _check_shapes(path, shapes, meta["kind"])
    _check_format(path, fmd, meta)
    return meta, out


def _check_format(path: Path, md: dict[str, str], meta: dict[str, Any]) -> None:
    """The file's format is this srclib's (FORMAT_VERSION): the meta's ``format``, or FORMAT_KEY in
    files written before it was the only key; format-1 files have neither."""
    raw = md.get(FORMAT_KEY, str(meta.get("format", 1)))
    try:
        version = int(raw)
    except ValueError:
        raise _corrupt(path, f"metadata {FORMAT_KEY!r} = {raw!r} is not a format number") from None
    if version != FORMAT_VERSION:
        raise TrajectoryFileError(
            f"trajectory file {path} has format {version}, this srclib reads format {FORMAT_VERSION} "
            f"(format 2 added the per-head shares): rerun the collect stage (dvc repro -f collect) "
            f"to rewrite it")


def check_trajectory_file(path: str | Path) -> dict[str, Any]:
    """Cheap check of a trajectory file (header only: metadata, tensor shapes and format;
    safetensors also checks that the header covers the whole file, so a truncated file fails
    here); returns its metadata. Raises FileNotFoundError or TrajectoryFileError naming the file."""
    return _read(Path(path), tensors=False)[0]


def load_trajectory(path: str | Path) -> Trajectory:
    """Read a trajectory written by ``save_trajectory``; a file that is not one (truncated,
    overwritten, a tensor or the metadata missing or misshapen) raises TrajectoryFileError
    naming it."""
    path = Path(path)
    meta, t = _read(path, tensors=True)
    S, L, B, T = t["mass_dev"].shape
    valid_len = t["valid_len"]
    if valid_len.numel() and (int(valid_len.min()) < 1 or int(valid_len.max()) > T):
        raise _corrupt(path, f"valid_len must lie in [1, {T}], got [{int(valid_len.min())}, {int(valid_len.max())}]")
    ex = (torch.arange(T)[None, :] < valid_len[:, None])[:, None, None, :].expand(S, L, B, T)
    mass = _decode(t["mass_dev"], t["mass_mean"], ex)
    prefill = None
    if "prefill_dev" in t:
        P = t["prompt_ids"].shape[1]
        pv = (torch.arange(T) < P - 1)[None, None, :].expand(L, B, T)
        prefill = _decode(t["prefill_dev"], t["prefill_mean"], pv)
    return Trajectory(meta=meta, mass=mass, valid_len=valid_len, prompt_ids=t["prompt_ids"],
                      final_ids=t["final_ids"], step_ids=t.get("step_ids"), prefill_mass=prefill,
                      head_bos_share=t.get("head_bos_share"), head_top_share=t.get("head_top_share"))
