"""One sink trajectory and its file (method.md 2): the ``Trajectory`` record, its safetensors
storage and the run names (model key, random-init twin).

Storage (``save_trajectory`` / ``load_trajectory``): one safetensors file per run, written
atomically.  Masses are stored as float16 DEVIATIONS from their row mean plus the float32 row
means, because near-uniform masses (random-init models) differ from each other by ~1e-3
relative, below float16's resolution on the raw values: the dominant position must survive the
round trip.  (float32 is used instead if a deviation would overflow float16.)  Tensors:
``mass_dev`` (S, L, B, T), ``mass_mean`` (S, L, B), ``valid_len`` (S,), ``step`` (S,),
``prompt_ids`` (B, P), ``final_ids`` (B, T); DLM: ``step_ids`` (S, B, T); AR: ``prefill_dev``
(L, B, T), ``prefill_mean`` (L, B).  Metadata key ``srclib_trajectory`` (``META_KEY``): JSON with
the model key, run name, kind, causal, shift, has_bos, bos/mask ids, random_init and the settings.
``load_trajectory`` / ``check_trajectory_file`` (header only, cheap) refuse a file that is not
one (truncated, overwritten, metadata or a tensor missing or misshapen) with
``TrajectoryFileError`` naming it.

AR full-prefix mass (``Trajectory.prefix_mass``): attention is causal, so earlier queries' rows
never change and the full-prefix column mass after step tau equals the prefill mass (queries
0 .. P-2) plus the newest-query masses of steps 0 .. tau.  Its per-query normalised version
divides key k by the number of queries that see it, T_tau - k with T_tau = P + tau keys.
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
]

log = logging.getLogger(__name__)

META_KEY = "srclib_trajectory"
FORMAT_VERSION = 1
PRIMARY_VARIANT = {"dlm": "full", "ar": "newest"}  # the paper's statistic for each kind


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

    def variants(self) -> dict[str, torch.Tensor]:
        """name -> (S, L, B, T) mass of every statistic variant of this kind."""
        if self.kind == "dlm":
            return {"full": self.mass}
        return {"newest": self.mass, "prefix_raw": self.prefix_mass(False),
                "prefix_norm": self.prefix_mass(True)}


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
    meta = {META_KEY: json.dumps(traj.meta, sort_keys=True)}
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
            meta = _meta(path, fh.metadata())
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
    return meta, out


def check_trajectory_file(path: str | Path) -> None:
    """Cheap check of a trajectory file (header only: metadata and tensor shapes; safetensors
    also checks that the header covers the whole file, so a truncated file fails here). Raises
    FileNotFoundError or TrajectoryFileError naming the file."""
    _read(Path(path), tensors=False)


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
                      final_ids=t["final_ids"], step_ids=t.get("step_ids"), prefill_mass=prefill)
