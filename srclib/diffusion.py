"""Masked-diffusion forward noising (method.md 3) and the LLaDA sampler (method.md 5).

``noise`` implements q(x_t | x_0): every position is independently replaced by the mask token
with probability p = (1 - eps) * t + eps.  ``noise_stratified`` is the released Dream forward process
(lib/prune_dream.py ``_forward_diffusion``): one u0 ~ U(0, 1) per call, t_i = (u0 + i / B) mod 1 for
row i of the B rows, the same masking, first and last position never masked.  ``generate`` is LLaDA's
semi-autoregressive low-confidence-remasking sampler, batched, with classifier-free guidance and an ``on_step`` hook
through which the trajectory recorder observes each denoising step at no extra forward cost.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from srclib import choices
from srclib.params import SamplerParams

__all__ = ["noise", "noise_stratified", "stratified_times", "mask_probability", "generate", "num_transfer_tokens",
           "sample_tokens", "REMASKING"]

log = logging.getLogger(__name__)


def mask_probability(t: float | torch.Tensor, eps: float) -> float | torch.Tensor:
    """p = (1 - eps) * t + eps: the per-position masking probability at time t (method.md 3)."""
    return (1.0 - eps) * t + eps


def noise(
    x0: torch.Tensor,
    t: float | torch.Tensor,
    mask_id: int,
    *,
    eps: float,
    generator: torch.Generator | None = None,
    keep_ends: bool = False,
    keep_first: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward-noise clean ids: each position is masked independently with p = (1-eps)*t + eps.

    x0: (B, T) token ids.  t: a float in [0, 1] or a per-row tensor (B,).
    keep_ends: the first and last positions are never masked (Dream's variant).
    keep_first: position 0 is never masked (shifted models: its logits are never read).
    Returns (noisy_ids (B, T), mask (B, T) bool, True where the mask token was placed).
    The uniform draws come from ``generator`` (on x0's device), so a seeded generator makes the
    result reproducible.
    """
    if x0.dim() != 2:
        raise ValueError(f"x0 must be (B, T) token ids, got shape {tuple(x0.shape)}")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must be in [0, 1], got {eps}")
    B, T = x0.shape
    if isinstance(t, torch.Tensor):
        t = t.to(device=x0.device, dtype=torch.float32)
        if t.dim() == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"t must be a float or a tensor of shape (B,) = ({B},), got {tuple(t.shape)}")
        if bool(((t < 0) | (t > 1)).any()):
            raise ValueError("t must lie in [0, 1]")
        p = mask_probability(t, eps)[:, None]  # (B, 1)
    else:
        if not 0.0 <= float(t) <= 1.0:
            raise ValueError(f"t must lie in [0, 1], got {t}")
        p = float(mask_probability(float(t), eps))
    u = torch.rand((B, T), generator=generator, device=x0.device)  # (B, T)
    mask = u < p  # (B, T)
    if keep_first or keep_ends:
        mask[:, 0] = False
    if keep_ends:
        mask[:, -1] = False
    noisy = torch.where(mask, torch.full_like(x0, int(mask_id)), x0)
    return noisy, mask


def stratified_times(batch: int, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """t_i = (u0 + i / B) mod 1 for i = 0 .. B-1 from ONE draw u0 ~ U(0, 1): (B,) float32 in [0, 1)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    u0 = torch.rand(1, generator=generator, device=device, dtype=torch.float32)  # (1,)
    i = torch.arange(batch, device=device, dtype=torch.float32)  # (B,)
    return (u0 + i / batch) % 1


def noise_stratified(
    x0: torch.Tensor, mask_id: int, eps: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The released Dream forward process on x0 (B, T): t from ``stratified_times`` (u0 drawn first),
    then every position masked with p = (1 - eps) t_i + eps from a (B, T) uniform draw, positions 0
    and T-1 never. Returns (noisy_ids (B, T), mask (B, T) bool, t (B,))."""
    if x0.dim() != 2:
        raise ValueError(f"x0 must be (B, T) token ids, got shape {tuple(x0.shape)}")
    t = stratified_times(x0.shape[0], generator, x0.device)
    noisy, mask = noise(x0, t, mask_id, eps=eps, generator=generator, keep_ends=True)
    return noisy, mask, t


# ---------------------------------------------------------------------------------------------
# LLaDA sampler (method.md 5)
# ---------------------------------------------------------------------------------------------
LogitsFn = Callable[[torch.Tensor], torch.Tensor]  # ids (B, T) -> aligned logits (B, T, V)
OnStep = Callable[[int, torch.Tensor, dict[str, Any]], None]


def num_transfer_tokens(masked_count: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's get_num_transfer_tokens: spread each row's M masked tokens over ``steps`` steps.

    masked_count: (B,) ints.  Returns (B, steps) int64: every step commits M // steps tokens and the
    first M % steps steps commit one more, so each row sums to M.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    m = masked_count.to(torch.int64).reshape(-1, 1)  # (B, 1)
    base, rem = m // steps, m % steps
    idx = torch.arange(steps, device=m.device)[None, :]  # (1, steps)
    return base + (idx < rem).to(torch.int64)  # (B, steps)


def _confidence_low(logits: torch.Tensor, x0: torch.Tensor, generator) -> torch.Tensor:
    p = torch.softmax(logits.float(), dim=-1)  # (B, T, V)
    return torch.gather(p, -1, x0[..., None])[..., 0]  # (B, T)


def _confidence_random(logits: torch.Tensor, x0: torch.Tensor, generator) -> torch.Tensor:
    return torch.rand(x0.shape, generator=generator, device=x0.device)  # (B, T)


REMASKING: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Generator | None], torch.Tensor]] = {
    "low_confidence": _confidence_low,
    "random": _confidence_random,
}
choices.check("remasking strategies", REMASKING, choices.REMASKING)


def sample_tokens(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None):
    """x0 = argmax(logits) at temperature 0; else Gumbel-max in float64 as LLaDA's add_gumbel_noise:
    argmax(exp(l) / (-log U)^temperature), U ~ U(0, 1) from ``generator``. (B, T, V) -> (B, T)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    l64 = logits.to(torch.float64)
    u = torch.rand(l64.shape, generator=generator, device=l64.device, dtype=torch.float64)
    return (l64.exp() / (-torch.log(u)) ** temperature).argmax(dim=-1)


def _default_logits_fn(model, adapter, shift: bool) -> LogitsFn:
    from srclib.models.base import Adapter

    if adapter is None:  # the shift is handled by the adapter contract in one place only
        adapter = Adapter(key="<sampler>", causal=False, shift=shift, blocks_path="")
    return lambda ids: adapter.logits(model, ids)


@torch.no_grad()
def generate(
    model,
    prompt_ids: torch.Tensor,
    *,
    steps: int,
    gen_length: int,
    block_length: int,
    temperature: float,
    cfg_scale: float,
    remasking: str,
    mask_id: int,
    shift: bool | None = None,
    generator: torch.Generator | None = None,
    on_step: OnStep | None = None,
    logits_fn: LogitsFn | None = None,
    adapter=None,
) -> torch.Tensor:
    """LLaDA's semi-autoregressive masked-diffusion sampler (method.md 5), batched.

    prompt_ids: (B, P) prompt ids (same length for every row; no padding).  Returns (B, P + G) ids.
    x = [prompt, MASK * gen_length]; the generation is cut into gen_length / block_length blocks
    decoded left to right with steps / n_blocks steps each.  At every step:
      logits  = logits_fn(x)  (aligned: position i predicts token i), with CFG when cfg_scale = w > 0:
                u = logits of a copy whose prompt positions are the mask token; c = logits of x;
                logits = u + (w + 1) (c - u)  (both rows go through ONE forward of batch 2B,
                conditional rows first);
      x0      = argmax(logits) (temperature 0) or Gumbel-max in float64 (``sample_tokens``);
      conf    = softmax(logits)[x0] ("low_confidence") or U(0, 1) ("random");
      conf    = -inf outside the current block and at already committed positions;
      commit  the k highest-confidence masked positions of the current block (ties: lowest
              position), k from ``num_transfer_tokens``; committed tokens never change.

    Logits: ``logits_fn(ids) -> (B, T, V)`` aligned logits if given; else ``adapter.logits(model,
    ids)``; else the model's output aligned with ``shift`` (True: Dream-style, output i-1 predicts
    token i).  ``shift=None`` means ``adapter.shift`` when an adapter is given, else False.  With a
    shifted model position 0 is never masked: the prompt must be non-empty, and the unconditional
    CFG copy keeps position 0.

    on_step(step, ids, info) is called once per denoising step (step = 0 .. steps-1), right AFTER
    that step's forward pass and commit and before the next forward; ``ids`` is the (B, T) tensor
    the forward saw (before the commit).  info: ``block`` (int), ``step_in_block`` (int),
    ``x`` (ids after the commit, (B, T)), ``committed`` ((B, T) bool, positions committed at this
    step), ``cfg`` (bool: the forward had batch 2B, conditional rows first).  A recorder that wraps
    the whole call in ``srclib.attention.record_mass`` reads this step's attention mass in on_step
    and resets it: recording costs no extra forward.  Tensors passed are copies the callback may keep.
    """
    # the sampler's rules live in one place (srclib.params.SamplerParams); a ParamsError is a ValueError
    SamplerParams(steps=steps, gen_length=gen_length, block_length=block_length, temperature=temperature,
                  cfg_scale=cfg_scale, remasking=remasking)
    n_blocks = gen_length // block_length
    if prompt_ids.dim() != 2:
        raise ValueError(f"prompt_ids must be (B, P), got shape {tuple(prompt_ids.shape)}")
    shift = _resolved_shift(shift, adapter)
    B, P = prompt_ids.shape
    if shift and P < 1:
        raise ValueError("a shifted model needs a non-empty prompt (position 0 is never masked)")
    if logits_fn is None:
        logits_fn = _default_logits_fn(model, adapter, bool(shift))
    steps_per_block = steps // n_blocks
    device = prompt_ids.device

    x = torch.full((B, P + gen_length), int(mask_id), dtype=torch.long, device=device)  # (B, T)
    x[:, :P] = prompt_ids
    T = x.shape[1]
    uncond_pos = _unconditional_positions(P, T, shift, device)
    pos = torch.arange(T, device=device)
    confidence_fn = REMASKING[remasking]

    step = 0
    for b in range(n_blocks):
        lo, hi = P + b * block_length, P + (b + 1) * block_length
        in_block = (pos >= lo) & (pos < hi)  # (T,)
        k_per_step = num_transfer_tokens((x[:, lo:hi] == mask_id).sum(dim=1), steps_per_block)  # (B, s)
        for i in range(steps_per_block):
            masked = x == mask_id  # (B, T)
            logits = _guided_logits(logits_fn, x, uncond_pos, mask_id, cfg_scale)  # (B, T, V)
            x0 = sample_tokens(logits, temperature, generator)  # (B, T)
            conf = confidence_fn(logits, x0, generator).to(torch.float64)  # (B, T)
            commit = _commit_mask(conf, masked & in_block[None, :], k_per_step[:, i], pos)  # (B, T) bool
            seen = x.clone() if on_step is not None else None
            x = torch.where(commit, x0, x)
            if on_step is not None:
                on_step(step, seen, dict(block=b, step_in_block=i, x=x.clone(), committed=commit,
                                         cfg=cfg_scale > 0))
            step += 1
    return x


def _resolved_shift(shift: bool | None, adapter) -> bool:
    """``shift``, or ``adapter.shift`` when it is None (False without an adapter); raises when the
    two are given and disagree."""
    if shift is None:
        shift = bool(adapter.shift) if adapter is not None else False
    elif adapter is not None and bool(shift) != bool(adapter.shift):
        raise ValueError(f"shift={shift} contradicts the adapter {adapter.key!r} (shift={adapter.shift})")
    return shift


def _unconditional_positions(P: int, T: int, shift: bool, device) -> torch.Tensor:
    """(T,) bool: the positions the unconditional CFG copy masks: the prompt, except position 0 of
    a shifted model (never masked)."""
    prompt_pos = torch.zeros(T, dtype=torch.bool, device=device)
    prompt_pos[:P] = True
    if shift:
        uncond_pos = prompt_pos.clone()
        uncond_pos[0] = False  # position 0 of a shifted model is never masked
    else:
        uncond_pos = prompt_pos
    return uncond_pos


def _guided_logits(
    logits_fn: LogitsFn, x: torch.Tensor, uncond_pos: torch.Tensor, mask_id: int, cfg_scale: float,
) -> torch.Tensor:
    """(B, T, V) logits of ``x`` (B, T); with cfg_scale = w > 0 ``u + (w + 1) (c - u)`` from ONE
    forward of batch 2B (conditional rows first, then the copy masked at ``uncond_pos``)."""
    if cfg_scale > 0:
        B = x.shape[0]
        un_x = x.clone()
        un_x[:, uncond_pos] = int(mask_id)
        both = logits_fn(torch.cat([x, un_x], dim=0))  # (2B, T, V)
        c, u = both[:B], both[B:]
        return u + (cfg_scale + 1.0) * (c - u)  # (B, T, V)
    return logits_fn(x)  # (B, T, V)


def _commit_mask(conf: torch.Tensor, open_pos: torch.Tensor, k_step: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the k_step[b] (capped by the open positions) highest-``conf`` positions among
    ``open_pos`` (B, T) bool (masked and in the current block) of each row; ties: lowest position."""
    B, T = conf.shape
    conf = torch.where(open_pos, conf, torch.full_like(conf, float("-inf")))
    order = torch.sort(conf, dim=1, descending=True, stable=True).indices  # (B, T)
    avail = (conf > float("-inf")).sum(dim=1)  # (B,)
    k = torch.minimum(k_step, avail)  # (B,)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, pos.expand(B, T).contiguous())  # rank of every position
    return rank < k[:, None]  # (B, T) bool
