"""Recording sink trajectories: the collect stage's computation (method.md 2).

``collect_trajectory`` runs a model on a batch of prompts and records, at every step, the
per-layer attention key mass (srclib.attention.record_mass):

* DLM (adapter.causal False): the LLaDA sampler (srclib.diffusion.generate) with the sampler
  settings of the collect params; at denoising step tau the mass m^(l)(tau) over the whole
  sequence (prompt + generation) of the step's forward pass (conditional rows only under CFG),
  plus the ids that forward saw (which keys are [MASK], which were committed at the previous
  step) and the final ids.  S = ``steps`` steps.
* AR (adapter.causal True): greedy decoding with a KV cache (srclib.decoding.greedy_decode),
  ``gen_length`` steps; at step tau the column mass of the newest query (position P-1+tau) over
  keys 0 .. P-1+tau.  The full-prefix mass is NOT recomputed with extra forwards
  (``Trajectory.prefix_mass`` in srclib.trajectories.store; a test checks it against a real
  full-prefix forward).

Per head (both kinds): at every step, each head's BOS share and top share of that step's forward
(srclib.attention, ``record_mass(per_head=True)``; AR: the newest query), stored as
``Trajectory.head_bos_share`` / ``head_top_share`` (S, L, H, B). The per-layer masses are the
same bits as without them.

Prompts (``prompt_batch``): each text is tokenised without special tokens; the tokenizer's own
special prefix (e.g. [BOS], found by encoding a probe with and without special tokens) is kept
in front; the text is LEFT-truncated (its last tokens are kept) so that every prompt is exactly
``prompt_tokens`` ids long.  Texts too short for that are skipped (logged); the first
``n_prompts`` long-enough prompts in file order are used, or a ValueError says how many
qualified.  ``has_bos`` records whether position 0 is the tokenizer's BOS.

Random-init control: ``random_init_twin(model, seed)`` builds the same architecture from the
model's config with a seeded initialisation; the collect stage collects it as run
``<key>-randinit`` with the same prompts and settings.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from srclib import devices
from srclib.attention import record_mass
from srclib.decoding import greedy_decode
from srclib.diffusion import generate
from srclib.notebook import Progress
from srclib.trajectories.store import FORMAT_VERSION, Trajectory

if TYPE_CHECKING:
    from srclib.params import CollectParams

__all__ = ["read_prompts", "prompt_batch", "random_init_twin", "collect_trajectory"]

log = logging.getLogger(__name__)


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
    cfg: CollectParams,
    *,
    run_name: str | None = None,
    random_init: bool = False,
) -> Trajectory:
    """Record one model's sink trajectory on a batch of prompts (see the module docstring).

    prompts: texts (tokenised with ``tokenizer`` by ``prompt_batch``; the first ``cfg.n_prompts``
    long enough) or a (B, P) id tensor (then P must equal cfg.prompt_tokens and ``tokenizer`` may
    be None).  cfg: the collect params; DLM runs use its sampler settings (gen_length, steps,
    block_length, temperature, cfg_scale, remasking) and a torch.Generator seeded with
    ``cfg.seed``; AR runs decode ``cfg.gen_length`` greedy steps and ignore the rest of the
    sampler.  ``cfg.chunk_size``: the attention recorder's query chunk.
    """
    prompt_tokens = cfg.prompt_tokens
    if isinstance(prompts, torch.Tensor):
        ids = prompts.to(torch.long)
        if ids.dim() != 2 or ids.shape[1] != prompt_tokens:
            raise ValueError(f"prompt ids must be (B, prompt_tokens={prompt_tokens}), got {tuple(ids.shape)}")
        used = list(range(ids.shape[0]))
    else:
        if tokenizer is None:
            raise ValueError("text prompts need a tokenizer")
        ids, used = prompt_batch(tokenizer, prompts, prompt_tokens=prompt_tokens, n_prompts=cfg.n_prompts)
    ids = ids.to(devices.of(model))  # (B, P)
    B, P = ids.shape
    bos_id = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None
    if bos_id is None:
        bos_id = getattr(model.config, "bos_token_id", None)
    kind = "ar" if adapter.causal else "dlm"
    settings = dict(prompt_tokens=prompt_tokens, gen_length=cfg.gen_length, steps=cfg.steps,
                    block_length=cfg.block_length, temperature=cfg.temperature, cfg_scale=cfg.cfg_scale,
                    remasking=cfg.remasking, seed=cfg.seed, chunk_size=cfg.chunk_size, n_prompts=B)
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
            traj = _collect_dlm(model, adapter, ids, mask_id, meta, cfg)
        else:
            traj = _collect_ar(model, ids, meta, gen_length=cfg.gen_length, chunk_size=cfg.chunk_size)
    finally:
        model.train(was_training)
    return traj


def _collect_dlm(model, adapter, ids: torch.Tensor, mask_id: int, meta: dict[str, Any],
                 cfg: CollectParams) -> Trajectory:
    """The sampler's run with one mass record per denoising step. ids: (B, P)."""
    B = ids.shape[0]
    device = ids.device
    gen = torch.Generator(device=device).manual_seed(int(cfg.seed))
    masses: list[torch.Tensor] = []
    seen: list[torch.Tensor] = []
    heads = _HeadSteps(B)
    bar = Progress(f"collect {meta['run']}", cfg.steps)  # progress lines: the runner's terminal only
    with record_mass(chunk_size=cfg.chunk_size, per_head=True) as rec:

        def on_step(step: int, x: torch.Tensor, info: dict[str, Any]) -> None:
            m = rec.mass  # (L, B or 2B, T): this step's forward
            heads.add(rec)
            rec.reset()
            masses.append(m[:, :B].cpu())  # conditional rows first under CFG
            seen.append(x.cpu())
            bar.update(1)

        final = generate(model, ids, **cfg.sampler_kwargs(), mask_id=mask_id, adapter=adapter,
                         generator=gen, on_step=on_step)
    bar.close()
    mass = torch.stack(masses).float()  # (S, L, B, T)
    T = mass.shape[-1]
    return Trajectory(meta=meta, mass=mass, valid_len=torch.full((mass.shape[0],), T, dtype=torch.long),
                      prompt_ids=ids.cpu(), final_ids=final.cpu(), step_ids=torch.stack(seen), **heads.tensors())


class _HeadSteps:
    """Per-step per-head shares of the first B batch rows (conditional rows under CFG)."""

    def __init__(self, B: int) -> None:
        self.B = B
        self.bos: list[torch.Tensor] = []
        self.top: list[torch.Tensor] = []

    def add(self, rec) -> None:
        self.bos.append(rec.bos_share[:, : self.B].permute(0, 2, 1).cpu())  # (L, H, B)
        self.top.append(rec.top_share[:, : self.B].permute(0, 2, 1).cpu())

    def tensors(self) -> dict[str, torch.Tensor]:
        """{"head_bos_share", "head_top_share"}: (S, L, H, B) float32 each."""
        return {"head_bos_share": torch.stack(self.bos).float(), "head_top_share": torch.stack(self.top).float()}


def _collect_ar(model, ids, meta, *, gen_length, chunk_size) -> Trajectory:
    B, P = ids.shape
    T = P + gen_length
    newest: list[torch.Tensor] = []
    prefill: list[torch.Tensor] = []
    heads = _HeadSteps(B)
    bar = Progress(f"collect {meta['run']}", gen_length)
    with record_mass(chunk_size=chunk_size, per_head=True) as rec:

        def on_prefill(prefix: torch.Tensor) -> None:
            prefill.append(rec.mass.cpu())  # (L, B, P-1)
            rec.reset()

        def on_step(step: int, x: torch.Tensor, info: dict[str, Any]) -> None:
            m = rec.mass  # (L, B, P + step): the newest query over all keys so far
            heads.add(rec)  # the newest query's per-head shares
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
                      prompt_ids=ids.cpu(), final_ids=final.cpu(), prefill_mass=pre, **heads.tensors())


