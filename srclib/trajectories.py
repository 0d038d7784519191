"""Sink trajectories: the collect and variance stages (method.md 2).

collect
    ``collect_trajectory`` runs a model on a batch of prompts and records, at every step, the
    per-layer attention key mass (srclib.attention.record_mass):

    * DLM (adapter.causal False): the LLaDA sampler (srclib.diffusion.generate); at denoising step
      tau the mass m^(l)(tau) over the whole sequence (prompt + generation) of the step's forward
      pass (conditional rows only under CFG), plus the ids that forward saw (which keys are [MASK],
      which were committed at the previous step) and the final ids.  S = ``steps`` steps.
    * AR (adapter.causal True): greedy decoding with a KV cache (srclib.decoding.greedy_decode),
      ``gen_length`` steps; at step tau the column mass of the newest query (position P-1+tau) over
      keys 0 .. P-1+tau.  The full-prefix mass is NOT recomputed with extra forwards: attention is
      causal, so earlier queries' rows never change and the full-prefix column mass after step tau
      equals the prefill mass (queries 0 .. P-2) plus the newest-query masses of steps 0 .. tau
      (``Trajectory.prefix_mass``; a test checks it against a real full-prefix forward).  Its
      per-query normalised version divides key k by the number of queries that see it, T_tau - k
      with T_tau = P + tau keys.

    Prompts (``prompt_batch``): each text is tokenised without special tokens; the tokenizer's own
    special prefix (e.g. [BOS], found by encoding a probe with and without special tokens) is kept
    in front; the text is LEFT-truncated (its last tokens are kept) so that every prompt is exactly
    ``prompt_tokens`` ids long.  Texts too short for that are skipped (logged); the first
    ``n_prompts`` long-enough prompts in file order are used, or a ValueError says how many
    qualified.  ``has_bos`` records whether position 0 is the tokenizer's BOS.

    Storage (``save_trajectory`` / ``load_trajectory``): one safetensors file per run, written
    atomically.  Masses are stored as float16 DEVIATIONS from their row mean plus the float32 row
    means, because near-uniform masses (random-init models) differ from each other by ~1e-3
    relative, below float16's resolution on the raw values: the dominant position must survive the
    round trip.  (float32 is used instead if a deviation would overflow float16.)  Tensors:
    ``mass_dev`` (S, L, B, T), ``mass_mean`` (S, L, B), ``valid_len`` (S,), ``step`` (S,),
    ``prompt_ids`` (B, P), ``final_ids`` (B, T); DLM: ``step_ids`` (S, B, T); AR: ``prefill_dev``
    (L, B, T), ``prefill_mean`` (L, B).  Metadata key ``srclib_trajectory``: JSON with the model
    key, run name, kind, causal, shift, has_bos, bos/mask ids, random_init and the settings.

    Random-init control: ``random_init_twin(model, seed)`` builds the same architecture from the
    model's config with a seeded initialisation; ``run_collect(random_init_control=True)`` collects
    it as run ``<key>-randinit`` with the same prompts and settings.

variance
    ``sink_statistics`` turns a trajectory into per-layer and global statistics (definitions in
    srclib.sinks): normalised dominant-sink positional variance Var_tau[p(tau)] / T^2 with T the
    final sequence length P + gen_length (the same T for DLM and AR runs), mean Jaccard stability
    of consecutive sink sets, sinks per step, dominant mass share x T_tau (1 = uniform), fraction
    of steps whose dominant key is position 0, and persistence (the fraction of the steps at which
    a position EXISTS as a key that it is a sink; stable = persistence >= stability_threshold).
    Statistics are computed per prompt and averaged over prompts (``*_std``: std over prompts).
    Variants: DLM ``full``; AR ``newest`` (the paper's), ``prefix_raw``, ``prefix_norm``.
    DLM key classes at step tau (from the ids the forward saw): [MASK] keys, content keys
    (everything else), freshly committed keys (committed at step tau-1): the fraction of steps the
    dominant key is of each class, sinks per step of each class, the positional variance of the
    dominant key restricted to [MASK] / content keys, and the mass ratio of [MASK] keys (their mass
    share over their count share).
    Stable-sink info for the prune stage: per layer and global, the stable positions of every
    prompt; the pruner itself judges stability on its own calibration pass with
    ``srclib.sinks.stability_weights`` (re-exported here).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from srclib.attention import record_mass
from srclib.decoding import greedy_decode
from srclib.diffusion import generate
from srclib.files import atomic_path, sha256_file, write_json
from srclib.provenance import provenance
from srclib.sinks import (
    dominant_positions,
    dominant_share,
    position_variance,
    sink_jaccard,
    sink_scores,
    sink_sets,
    stability_weights,
)

__all__ = [
    "Trajectory",
    "prompt_batch",
    "read_prompts",
    "collect_trajectory",
    "random_init_twin",
    "random_init_name",
    "save_trajectory",
    "load_trajectory",
    "sink_statistics",
    "statistics_table",
    "stability_weights",
    "run_collect",
    "run_variance",
    "PRIMARY_VARIANT",
]

log = logging.getLogger(__name__)

META_KEY = "srclib_trajectory"
FORMAT_VERSION = 1
RANDOM_SUFFIX = "-randinit"
PRIMARY_VARIANT = {"dlm": "full", "ar": "newest"}  # the paper's statistic for each kind
PERSISTENCE_BINS = np.linspace(0.0, 1.0, 11)


# ---------------------------------------------------------------------------------------------
# the record
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# prompts
# ---------------------------------------------------------------------------------------------
def read_prompts(path: str | Path) -> list[str]:
    """The ``text`` field of every line of a prompts.jsonl file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path} (build data/raw first)")
    texts = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if line.strip():
            rec = json.loads(line)
            if "text" not in rec:
                raise ValueError(f"{path}:{i + 1}: prompt record has no 'text' field")
            texts.append(rec["text"])
    return texts


def _special_prefix(tokenizer) -> list[int]:
    """The ids a tokenizer puts before the text when it adds special tokens (e.g. [BOS]); may be []."""
    probe = "The"
    plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start]
    return []


def prompt_batch(
    tokenizer, texts: Sequence[str], *, prompt_tokens: int, n_prompts: int
) -> tuple[torch.Tensor, list[int]]:
    """(ids (n_prompts, prompt_tokens) int64, indices of the texts used). See the module docstring."""
    if prompt_tokens < 1 or n_prompts < 1:
        raise ValueError(f"prompt_tokens and n_prompts must be >= 1, got {prompt_tokens}, {n_prompts}")
    prefix = _special_prefix(tokenizer)
    need = prompt_tokens - len(prefix)
    if need < 1:
        raise ValueError(f"prompt_tokens ({prompt_tokens}) leaves no room after the special prefix {prefix}")
    rows, used, short = [], [], 0
    for i, text in enumerate(texts):
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(ids) < need:
            short += 1
            continue
        rows.append(prefix + ids[len(ids) - need:])  # left-truncate: keep the last tokens
        used.append(i)
        if len(rows) == n_prompts:
            break
    if short:
        log.info("skipped %d prompts shorter than %d text tokens", short, need)
    if len(rows) < n_prompts:
        raise ValueError(
            f"only {len(rows)} of {len(texts)} prompts have >= {need} text tokens (prompt_tokens="
            f"{prompt_tokens}); lower collect.prompt_tokens or collect.n_prompts"
        )
    return torch.tensor(rows, dtype=torch.long), used


# ---------------------------------------------------------------------------------------------
# collection
# ---------------------------------------------------------------------------------------------
def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def random_init_name(key: str) -> str:
    """Run name of a model's random-init control."""
    return f"{key}{RANDOM_SUFFIX}"


def random_init_twin(model, seed: int):
    """The same architecture with freshly, deterministically initialised weights (eval mode, same
    device and dtype).  The global torch RNG is left untouched."""
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    param = next(model.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        cls = type(model)
        twin = cls._from_config(config) if hasattr(cls, "_from_config") else cls(config)
    return twin.to(device=param.device, dtype=param.dtype).eval()


def collect_trajectory(
    model,
    adapter,
    tokenizer,
    prompts: Sequence[str] | torch.Tensor,
    *,
    prompt_tokens: int,
    gen_length: int,
    steps: int,
    block_length: int,
    temperature: float,
    cfg_scale: float,
    remasking: str,
    seed: int,
    chunk_size: int,
    n_prompts: int | None = None,
    run_name: str | None = None,
    random_init: bool = False,
) -> Trajectory:
    """Record one model's sink trajectory on a batch of prompts (see the module docstring).

    prompts: texts (tokenised with ``tokenizer`` by ``prompt_batch``; ``n_prompts`` of them, default
    all) or a (B, P) id tensor (then P must equal prompt_tokens and ``tokenizer`` may be None).
    DLM runs use ``steps``/``block_length``/``temperature``/``cfg_scale``/``remasking`` and a
    torch.Generator seeded with ``seed``; AR runs decode ``gen_length`` greedy steps and ignore them.
    """
    if isinstance(prompts, torch.Tensor):
        ids = prompts.to(torch.long)
        if ids.dim() != 2 or ids.shape[1] != prompt_tokens:
            raise ValueError(f"prompt ids must be (B, prompt_tokens={prompt_tokens}), got {tuple(ids.shape)}")
        used = list(range(ids.shape[0]))
    else:
        if tokenizer is None:
            raise ValueError("text prompts need a tokenizer")
        ids, used = prompt_batch(tokenizer, prompts, prompt_tokens=prompt_tokens,
                                 n_prompts=n_prompts if n_prompts is not None else len(prompts))
    device = _model_device(model)
    ids = ids.to(device)
    B, P = ids.shape
    bos_id = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None
    if bos_id is None:
        bos_id = getattr(model.config, "bos_token_id", None)
    kind = "ar" if adapter.causal else "dlm"
    settings = dict(prompt_tokens=prompt_tokens, gen_length=gen_length, steps=steps,
                    block_length=block_length, temperature=temperature, cfg_scale=cfg_scale,
                    remasking=remasking, seed=seed, chunk_size=chunk_size, n_prompts=B)
    mask_id = adapter.mask_id(model) if kind == "dlm" else None
    meta = dict(
        format=FORMAT_VERSION, model=adapter.key, run=run_name or adapter.key, kind=kind,
        causal=bool(adapter.causal), shift=bool(adapter.shift), bos_id=bos_id, mask_id=mask_id,
        has_bos=bool(bos_id is not None and bool((ids[:, 0] == bos_id).all())),
        random_init=bool(random_init), prompt_indices=used, settings=settings,
    )
    was_training = model.training
    model.eval()
    try:
        if kind == "dlm":
            traj = _collect_dlm(model, adapter, ids, mask_id, meta, gen_length=gen_length, steps=steps,
                                block_length=block_length, temperature=temperature, cfg_scale=cfg_scale,
                                remasking=remasking, seed=seed, chunk_size=chunk_size)
        else:
            traj = _collect_ar(model, ids, meta, gen_length=gen_length, chunk_size=chunk_size)
    finally:
        model.train(was_training)
    return traj


def _collect_dlm(model, adapter, ids, mask_id, meta, *, gen_length, steps, block_length, temperature,
                 cfg_scale, remasking, seed, chunk_size) -> Trajectory:
    B = ids.shape[0]
    device = ids.device
    gen = torch.Generator(device=device).manual_seed(int(seed))
    masses: list[torch.Tensor] = []
    seen: list[torch.Tensor] = []
    bar = tqdm(total=steps, desc=f"collect {meta['run']}", leave=False)
    with record_mass(chunk_size=chunk_size) as rec:

        def on_step(step: int, x: torch.Tensor, info: dict[str, Any]) -> None:
            m = rec.mass  # (L, B or 2B, T): this step's forward
            rec.reset()
            masses.append(m[:, :B].cpu())  # conditional rows first under CFG
            seen.append(x.cpu())
            bar.update(1)

        final = generate(model, ids, steps=steps, gen_length=gen_length, block_length=block_length,
                         temperature=temperature, cfg_scale=cfg_scale, remasking=remasking,
                         mask_id=mask_id, adapter=adapter, generator=gen, on_step=on_step)
    bar.close()
    mass = torch.stack(masses).float()  # (S, L, B, T)
    T = mass.shape[-1]
    return Trajectory(meta=meta, mass=mass, valid_len=torch.full((mass.shape[0],), T, dtype=torch.long),
                      prompt_ids=ids.cpu(), final_ids=final.cpu(), step_ids=torch.stack(seen))


def _collect_ar(model, ids, meta, *, gen_length, chunk_size) -> Trajectory:
    B, P = ids.shape
    T = P + gen_length
    newest: list[torch.Tensor] = []
    prefill: list[torch.Tensor] = []
    bar = tqdm(total=gen_length, desc=f"collect {meta['run']}", leave=False)
    with record_mass(chunk_size=chunk_size) as rec:

        def on_prefill(prefix: torch.Tensor) -> None:
            prefill.append(rec.mass.cpu())  # (L, B, P-1)
            rec.reset()

        def on_step(step: int, x: torch.Tensor, info: dict[str, Any]) -> None:
            m = rec.mass  # (L, B, P + step): the newest query over all keys so far
            rec.reset()
            newest.append(torch.nn.functional.pad(m.cpu(), (0, T - m.shape[-1])))
            bar.update(1)

        final = greedy_decode(model, ids, max_new_tokens=gen_length, on_step=on_step, on_prefill=on_prefill)
    bar.close()
    mass = torch.stack(newest).float()  # (S, L, B, T)
    L = mass.shape[1]
    pre = (torch.nn.functional.pad(prefill[0], (0, T - prefill[0].shape[-1])).float() if prefill
           else torch.zeros(L, B, T))
    return Trajectory(meta=meta, mass=mass, valid_len=P + torch.arange(gen_length, dtype=torch.long),
                      prompt_ids=ids.cpu(), final_ids=final.cpu(), prefill_mass=pre)


# ---------------------------------------------------------------------------------------------
# storage
# ---------------------------------------------------------------------------------------------
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


def load_trajectory(path: str | Path) -> Trajectory:
    """Read a trajectory written by ``save_trajectory``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trajectory file not found: {path} (run the collect stage)")
    with safe_open(str(path), framework="pt") as fh:
        md = fh.metadata() or {}
        if META_KEY not in md:
            raise ValueError(f"{path} is not a srclib trajectory (no {META_KEY!r} metadata)")
        meta = json.loads(md[META_KEY])
        t = {k: fh.get_tensor(k) for k in fh.keys()}
    S, L, B, T = t["mass_dev"].shape
    valid_len = t["valid_len"]
    ex = (torch.arange(T)[None, :] < valid_len[:, None])[:, None, None, :].expand(S, L, B, T)
    mass = _decode(t["mass_dev"], t["mass_mean"], ex)
    prefill = None
    if "prefill_dev" in t:
        P = t["prompt_ids"].shape[1]
        pv = (torch.arange(T) < P - 1)[None, None, :].expand(L, B, T)
        prefill = _decode(t["prefill_dev"], t["prefill_mean"], pv)
    return Trajectory(meta=meta, mass=mass, valid_len=valid_len, prompt_ids=t["prompt_ids"],
                      final_ids=t["final_ids"], step_ids=t.get("step_ids"), prefill_mass=prefill)


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------
def _mean_std(x: torch.Tensor) -> tuple[float, float]:
    x = x.double()
    return float(x.mean()), float(x.std(unbiased=False))


def _series(m: torch.Tensor, valid_len: torch.Tensor, rule: str, alpha: float, kappa: float, eps: float):
    """Per-step sink scores, dominant positions and shares over the valid keys. m: (S, B, T)."""
    S, B, T = m.shape
    scores = torch.zeros(S, B, T, dtype=torch.float32)
    dom = torch.zeros(S, B, dtype=torch.long)
    share = torch.zeros(S, B, dtype=torch.float64)
    for s in range(S):
        n = int(valid_len[s])
        row = m[s, :, :n]  # (B, n)
        scores[s, :, :n] = sink_scores(row, rule=rule, alpha=alpha, kappa=kappa, eps=eps).float()
        dom[s] = dominant_positions(row)
        share[s] = dominant_share(row).double() * n  # ratio to the uniform share 1/n
    return scores, dom, share


def _restricted_dominant(m: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """argmax over the keys in ``keep`` only. m, keep: (S, B, T) -> (S, B)."""
    neg = torch.full_like(m, float("-inf"), dtype=torch.float64)
    return dominant_positions(torch.where(keep, m.double(), neg))


def _stats_one(
    m: torch.Tensor, traj: Trajectory, cfg: dict[str, Any], groups: dict[str, torch.Tensor] | None
):
    """Statistics of one (S, B, T) mass series. Returns (json dict, arrays for plots/stable info)."""
    S, B, T = m.shape
    T_norm = traj.seq_len
    scores, dom, share = _series(m, traj.valid_len, cfg["rule"], cfg["alpha"], cfg["kappa"], cfg["eps"])
    ex = traj.exists()  # (S, T)
    sinks = sink_sets(scores) & ex[:, None, :]  # (S, B, T)
    var = position_variance(dom.T, T_norm)  # (B,)
    out: dict[str, Any] = {}
    out["variance"], out["variance_std"] = _mean_std(var)
    if S >= 2:
        jac = sink_jaccard(scores.permute(1, 0, 2))  # (B,)
        out["jaccard"], out["jaccard_std"] = _mean_std(jac)
    else:
        out["jaccard"], out["jaccard_std"] = 1.0, 0.0
    out["sinks_per_step"] = float(sinks.sum(-1).double().mean())
    out["dominant_share_x_uniform"] = float(share.mean())
    out["dominant_at_0_frac"] = float((dom == 0).double().mean())
    exists_steps = ex.sum(0).clamp_min(1)  # (T,)
    pers = sinks.sum(0).double() / exists_steps[None, :]  # (B, T) over the steps the key exists
    ever = sinks.any(0)  # (B, T)
    hist = np.histogram(pers[ever].numpy(), bins=PERSISTENCE_BINS)[0] if bool(ever.any()) else np.zeros(10)
    out["persistence_hist"] = [float(h) / max(1.0, float(hist.sum())) for h in hist]
    out["persistence_max"] = float(pers.max(dim=-1).values.mean())
    out["persistence_pos0"] = float(pers[:, 0].mean())
    stable = (pers >= cfg["stability_threshold"] - 1e-12) & ever  # (B, T)
    out["n_stable"] = float(stable.sum(-1).double().mean())
    out["pos0_stable_frac"] = float(stable[:, 0].double().mean())
    if groups is not None:
        for name, g in groups.items():  # g: (S, B, T) bool
            on = g.gather(2, dom[..., None])[..., 0]  # (S, B) dominant key in the class
            rows = g.any(-1)  # (S, B) steps where the class is non-empty
            out[f"dominant_on_{name}_frac"] = float(on[rows].double().mean()) if bool(rows.any()) else 0.0
            out[f"sinks_per_step_{name}"] = float((sinks & g).sum(-1).double().mean())
        for name in ("mask", "content"):
            g = groups[name]
            rows = g.any(-1).all(0)  # (B,) prompts where the class is present at every step
            d = _restricted_dominant(m, g)  # (S, B)
            v = position_variance(d.T, T_norm)[rows] if bool(rows.any()) else torch.zeros(1)
            out[f"variance_{name}"] = float(v.double().mean())
        gm = groups["mask"]
        mass_share = (m * gm).sum(-1) / m.sum(-1)  # (S, B)
        count_share = gm.sum(-1).double() / T
        out["mask_mass_ratio"] = float((mass_share.double() / count_share.clamp_min(1e-12)).mean())
    arrays = dict(dominant=dom.T.numpy(), stable=[stable[b].nonzero().flatten().tolist() for b in range(B)])
    return out, arrays


def _dlm_groups(traj: Trajectory) -> dict[str, torch.Tensor]:
    ids = traj.step_ids  # (S, B, T)
    mask = ids == int(traj.meta["mask_id"])
    fresh = torch.zeros_like(mask)
    fresh[1:] = mask[:-1] & ~mask[1:]  # committed at the previous step
    return {"mask": mask, "content": ~mask, "fresh": fresh}


def sink_statistics(
    traj: Trajectory,
    *,
    rule: str,
    alpha: float,
    kappa: float,
    eps: float,
    stability_threshold: float,
    with_arrays: bool = False,
):
    """Per-layer and global sink statistics of one trajectory (see the module docstring).

    Returns a JSON-serialisable dict {"meta", "seq_len", "n_steps", "n_layers", "n_prompts",
    "settings", "variants": {variant: {"global": stats, "layers": [stats per layer]}},
    "stable_sinks": {variant: {"global": per-prompt lists of stable positions, "layers": [...]}}}.
    with_arrays: also return plot arrays, as (stats, arrays) with arrays = {"global_mass_norm":
    (B, S, T) per-step normalised global mass of the primary variant, "dominant": {variant: (B, S)
    global dominant positions}}.
    """
    if not 0.0 < stability_threshold <= 1.0:
        raise ValueError(f"stability_threshold must be in (0, 1], got {stability_threshold}")
    sink_scores(torch.ones(2), rule=rule)  # validates the rule name early
    cfg = dict(rule=rule, alpha=alpha, kappa=kappa, eps=eps, stability_threshold=stability_threshold)
    S, L, B, T = traj.shape
    groups = _dlm_groups(traj) if traj.kind == "dlm" else None
    res: dict[str, Any] = dict(meta=traj.meta, seq_len=T, n_steps=S, n_layers=L, n_prompts=B,
                               settings=cfg, variants={}, stable_sinks={})
    dominant: dict[str, np.ndarray] = {}
    variants = traj.variants()
    for vname, vm in variants.items():
        g_stats, g_arr = _stats_one(vm.sum(1), traj, cfg, groups)  # global mass (S, B, T)
        layer_stats, layer_stable = [], []
        for layer in range(L):
            st, arr = _stats_one(vm[:, layer], traj, cfg, groups)
            layer_stats.append(st)
            layer_stable.append(arr["stable"])
        res["variants"][vname] = {"global": g_stats, "layers": layer_stats}
        res["stable_sinks"][vname] = {"global": g_arr["stable"], "layers": layer_stable}
        dominant[vname] = g_arr["dominant"]
    if not with_arrays:
        return res
    gm = variants[PRIMARY_VARIANT[traj.kind]].sum(1)  # (S, B, T)
    norm = (gm / gm.sum(-1, keepdim=True).clamp_min(1e-30)).permute(1, 0, 2).numpy()  # (B, S, T)
    return res, {"global_mass_norm": norm, "dominant": dominant}


def statistics_table(stats_by_run: Mapping[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per (run, variant, layer) with every scalar statistic; layer "global" or "0".."L-1";
    ``primary`` marks the paper's variant (DLM full, AR newest)."""
    rows = []
    for name, stats in stats_by_run.items():
        kind = stats["meta"]["kind"]
        for vname, v in stats["variants"].items():
            for layer, st in [("global", v["global"])] + list(enumerate(v["layers"])):
                row = {"run": name, "model": stats["meta"]["model"], "kind": kind,
                       "random_init": stats["meta"]["random_init"], "variant": vname, "layer": str(layer),
                       "primary": vname == PRIMARY_VARIANT[kind]}
                row.update({k: val for k, val in st.items() if not isinstance(val, list)})
                rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# stages
# ---------------------------------------------------------------------------------------------


def _entry(entry: Any, name: str) -> Any:
    return entry[name] if isinstance(entry, Mapping) else getattr(entry, name)


def run_collect(
    *,
    models: Sequence[str],
    model_entries: Mapping[str, Any],
    prompts_path: str | Path,
    n_prompts: int,
    prompt_tokens: int,
    gen_length: int,
    steps: int,
    block_length: int,
    temperature: float,
    cfg_scale: float,
    remasking: str,
    chunk_size: int,
    random_init_control: bool,
    seed: int,
    trajectory_path: Callable[[str], Path],
    metrics_path: str | Path,
    loader: Callable[..., tuple[Any, Any, Any]] | None = None,
) -> dict[str, Any]:
    """The collect stage: one trajectory file per model (and per random-init twin).

    models: registry keys; model_entries[key] has ``dtype`` and ``device`` (params.yaml models:).
    trajectory_path(run_name) -> file path (srclib.paths.trajectory_file); metrics_path: the
    collect metrics JSON.  loader(key, dtype=...) -> (model, tokenizer, adapter), default
    srclib.models.load.  Returns {"runs": per-run summary, "samples": DataFrame of prompt/output
    texts, "metrics": what was written}.
    """
    from srclib.models.hf_causal import resolve_device

    if loader is None:
        from srclib.models import load as loader
    texts = read_prompts(prompts_path)
    runs: dict[str, Any] = {}
    samples = []
    for key in models:
        entry = model_entries[key]
        dtype = getattr(torch, _entry(entry, "dtype"))
        model, tok, adapter = loader(key, dtype=dtype)
        model = model.to(resolve_device(_entry(entry, "device")))
        targets = [(key, model, False)]
        if random_init_control:
            targets.append((random_init_name(key), random_init_twin(model, seed), True))
        for run, m, rnd in targets:
            t0 = time.perf_counter()
            traj = collect_trajectory(
                m, adapter, tok, texts, prompt_tokens=prompt_tokens, gen_length=gen_length, steps=steps,
                block_length=block_length, temperature=temperature, cfg_scale=cfg_scale,
                remasking=remasking, seed=seed, chunk_size=chunk_size, n_prompts=n_prompts,
                run_name=run, random_init=rnd,
            )
            seconds = time.perf_counter() - t0
            path = save_trajectory(traj, trajectory_path(run))
            S, L, B, T = traj.shape
            runs[run] = dict(model=key, kind=traj.kind, random_init=rnd, n_prompts=B, n_steps=S, n_layers=L,
                             seq_len=T, has_bos=traj.meta["has_bos"], seconds=round(seconds, 3),
                             sha256=sha256_file(path), path=str(path))
            log.info("collected %s: %d steps x %d layers x %d prompts in %.1f s", run, S, L, B, seconds)
            if tok is not None:
                P = traj.prompt_ids.shape[1]
                for b in range(min(B, 3)):
                    samples.append(dict(run=run, prompt=tok.decode(traj.final_ids[b, :P].tolist()),
                                        output=tok.decode(traj.final_ids[b, P:].tolist())))
        del model
    settings = dict(n_prompts=n_prompts, prompt_tokens=prompt_tokens, gen_length=gen_length, steps=steps,
                    block_length=block_length, temperature=temperature, cfg_scale=cfg_scale,
                    remasking=remasking, chunk_size=chunk_size, random_init_control=random_init_control,
                    seed=seed)
    # DVC metrics must be byte-identical across runs: no paths, no wall-clock seconds
    metrics = {"runs": {r: {k: v for k, v in d.items() if k not in ("path", "seconds")} for r, d in runs.items()},
               "provenance": provenance(params={"collect": settings})}
    write_json(metrics_path, metrics)
    return {"runs": runs, "samples": pd.DataFrame(samples), "metrics": metrics}


def run_variance(
    *,
    trajectory_paths: Mapping[str, str | Path],
    rule: str,
    alpha: float,
    kappa: float,
    eps: float,
    stability_threshold: float,
    sink_stats_path: Callable[[str], Path],
    metrics_path: str | Path,
) -> dict[str, Any]:
    """The variance stage: sink statistics of every collected run.

    trajectory_paths: run name -> trajectory file.  Writes sink_stats_path(run) (the full nested
    statistics, incl. stable sinks, for the prune stage) and metrics_path (the primary variant's
    global numbers per run, DVC metrics).  Returns {"stats": nested dicts, "table": DataFrame (one
    row per run x variant x layer), "main": DataFrame (primary variant, global, one row per run),
    "plots": {run: {"global_mass_norm": (B, S, T) per-step normalised global mass of the primary
    variant, "dominant": {variant: (B, S) dominant positions}, "variance_per_layer": (L,)}}}.
    """
    stats, plots, summary = {}, {}, {}
    for run, path in trajectory_paths.items():
        traj = load_trajectory(path)
        st, arrays = sink_statistics(traj, rule=rule, alpha=alpha, kappa=kappa, eps=eps,
                                     stability_threshold=stability_threshold, with_arrays=True)
        primary = PRIMARY_VARIANT[traj.kind]
        plots[run] = {
            **arrays,
            "variance_per_layer": np.array([s["variance"] for s in st["variants"][primary]["layers"]]),
        }
        write_json(sink_stats_path(run), st)
        stats[run] = st
        g = st["variants"][primary]["global"]
        summary[run] = {k: v for k, v in g.items() if not isinstance(v, list)}
        summary[run].update(kind_is_dlm=int(traj.kind == "dlm"), random_init=int(traj.meta["random_init"]))
    table = statistics_table(stats)
    main = table[(table["layer"] == "global") & table["primary"]].reset_index(drop=True) if stats else table
    settings = dict(rule=rule, alpha=alpha, kappa=kappa, eps=eps, stability_threshold=stability_threshold)
    metrics = {"runs": summary, "provenance": provenance(params={"variance": settings})}
    write_json(metrics_path, metrics)
    return {"stats": stats, "table": table, "main": main, "plots": plots, "metrics": metrics}
