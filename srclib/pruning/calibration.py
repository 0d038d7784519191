"""Calibration for pruning (method.md 3-4): windows, noised passes, and the two calibration loops.

* Windows: ``n_samples`` random windows of ``seq_len`` tokens from the tokenised calibration split
  (passages joined by a space, as the released code joins WikiText), window starts drawn with
  ``random.Random(seed).randint(0, n_tokens - L - 1)`` like the released ``get_loaders``;
  optionally each window starts with BOS (then L = seq_len - 1 corpus tokens follow it).
  ``released=True`` draws them exactly as the released lib/data.py does: the text tokenized with
  the tokenizer's special tokens (``tokenizer(text)``), ``random.seed(seed)`` then one
  ``randint(0, n_tokens - seq_len - 1)`` per window in a loop, windows the plain slices (no BOS).
* Passes: a "pass" is one calibration sequence. A DLM calibrated with noise sees every window
  n_t = len(t_grid) times (``noised_passes``, seeded torch.Generator, position 0 kept when the
  adapter is shifted; ``NOISES``): "grid" at every t of the grid (srclib.diffusion.noise);
  "stratified" as the released Dream code (srclib.diffusion.noise_stratified: t drawn per pass,
  both ends kept). A clean pass is the window itself.
* Loops (model-agnostic: the adapter gives the blocks and their prunable linears):
  - ``run_one_shot``: every pass through the DENSE model; forward hooks on every prunable linear
    feed ``feed(name, x, w)``. When token weights come from the attention mass of the same
    forward, the linears' inputs are kept (references, no copies) until the forward ends, the
    mass is turned into weights, then fed: one forward per pass, never two.
  - ``run_sequential``: block 0's inputs (args AND kwargs, whatever the model passes) are caught
    by a forward pre-hook that raises a sentinel; then block by block: hook the block's linears,
    run the block on every stored batch (statistics), call ``finish_block`` (prune), re-run the
    pruned block to produce block i+1's inputs. If the weights need the mass, the catching
    forward runs through all blocks under the recorder (still one forward per pass).
  - ``record_pass_mass`` (the mass-only pre-pass): the forward ends as soon as the last block's
    attention mass is recorded (``StopForward`` from the recorder's ``after_call``), before that
    attention call's output, the block's output projection and its MLP; same mass bit for bit.
"""

from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from srclib import devices
from srclib.data import corpus
from srclib.attention import record_mass
from srclib import choices
from srclib.diffusion import noise, noise_stratified
from srclib.notebook import progress

__all__ = [
    "Calibration",
    "PassBatch",
    "StopForward",
    "read_texts",
    "tokenize_texts",
    "sample_windows",
    "build_calibration",
    "noised_passes",
    "NOISES",
    "run_one_shot",
    "run_sequential",
    "catch_block_inputs",
    "record_pass_mass",
]

log = logging.getLogger(__name__)

# ids (B, T) -> runs the model (its output is ignored)
Forward = Callable[[torch.Tensor], Any]
# mass (L, B, T) -> token weights (B, T)
WeightFn = Callable[[torch.Tensor], torch.Tensor]
Feed = Callable[[str, torch.Tensor, "torch.Tensor | None"], None]


class StopForward(Exception):
    """Raised from a hook to end a forward pass early (caught by this module only)."""


@dataclass(frozen=True)
class Calibration:
    """Calibration data for ``prune_model``.

    windows: (N, T) int64 clean token windows. seed: seeds the noising generator.
    windows_per_batch: windows per forward (a forward holds windows_per_batch * n_t passes;
    params.yaml prune.calibration.windows_per_batch).
    mass_chunk_size: query chunk of the attention-mass recorder (srclib.attention.record_mass;
    prune.calibration.chunk_size).
    """

    windows: torch.Tensor
    seed: int
    windows_per_batch: int
    mass_chunk_size: int

    def __post_init__(self) -> None:
        w = self.windows
        if not isinstance(w, torch.Tensor) or w.dim() != 2 or w.dtype != torch.long:
            raise ValueError(
                f"Calibration.windows must be an (N, T) int64 tensor, got "
                f"{type(w).__name__} {getattr(w, 'dtype', '')} {tuple(getattr(w, 'shape', ()))}"
            )
        if w.shape[0] < 1 or w.shape[1] < 2:
            raise ValueError(f"Calibration.windows needs N >= 1 windows of T >= 2 tokens, got {tuple(w.shape)}")
        if self.windows_per_batch < 1:
            raise ValueError(f"windows_per_batch must be >= 1, got {self.windows_per_batch}")
        if self.mass_chunk_size < 1:
            raise ValueError(f"mass_chunk_size must be >= 1, got {self.mass_chunk_size}")


# ---- windows ------------------------------------------------------------------------------------
def read_texts(path: str | Path) -> list[str]:
    """The ``text`` field of every line of the calibration corpus (srclib.data.corpus.read_texts)."""
    return corpus.read_texts(path, what="calibration corpus")


def tokenize_texts(tokenizer: Any, texts: Sequence[str], special_tokens: bool = False) -> list[int]:
    """Token ids of the passages joined by a single space; ``special_tokens``: as the tokenizer adds
    them by default (the released ``tokenizer(" ".join(...))``), else none."""
    text = " ".join(texts)
    enc = tokenizer(text) if special_tokens else tokenizer(text, add_special_tokens=False)
    return list(enc["input_ids"])


def sample_windows(
    ids: Sequence[int] | torch.Tensor, n_samples: int, seq_len: int, seed: int, bos_id: int | None = None
) -> torch.Tensor:
    """(n_samples, seq_len) int64 windows; starts from ``random.Random(seed)`` as the released code.

    With ``bos_id`` every window is [BOS] + seq_len - 1 corpus tokens.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
    body = seq_len - (1 if bos_id is not None else 0)
    if ids.numel() < body + 1:
        raise ValueError(
            f"calibration corpus has {ids.numel()} tokens; seq_len={seq_len} needs at least {body + 1}"
        )
    rng = random.Random(seed)
    rows = []
    for _ in range(n_samples):
        i = rng.randint(0, ids.numel() - body - 1)
        win = ids[i:i + body]
        if bos_id is not None:
            win = torch.cat([torch.tensor([bos_id], dtype=torch.long), win])
        rows.append(win)
    return torch.stack(rows)  # (n_samples, seq_len)


def build_calibration(
    tokenizer: Any,
    corpus_path: str | Path,
    n_samples: int,
    seq_len: int,
    seed: int,
    bos_id: int | None,
    *,
    windows_per_batch: int,
    mass_chunk_size: int,
    released: bool = False,
) -> Calibration:
    """Read, tokenise and sample the calibration windows (see ``sample_windows``).

    released: the released loader's windows (module docstring): special tokens as the tokenizer adds
    them, no BOS prepended (``bos_id`` ignored), seq_len corpus tokens per window."""
    ids = tokenize_texts(tokenizer, read_texts(corpus_path), special_tokens=released)
    windows = sample_windows(ids, n_samples, seq_len, seed, None if released else bos_id)
    return Calibration(windows=windows, seed=seed, windows_per_batch=windows_per_batch,
                       mass_chunk_size=mass_chunk_size)


def _grid_passes(windows, t_grid, mask_id, eps, gen, keep_first, keep_ends, rows_per_draw):
    """Every window at every t of the grid, from ONE draw (independent of batching)."""
    N, T = windows.shape
    n_t = len(t_grid)
    x0 = windows.repeat_interleave(n_t, dim=0)  # (N * n_t, T): window-major, t-minor
    t = torch.tensor(list(t_grid), dtype=torch.float32).repeat(N)  # (N * n_t,)
    noisy, _ = noise(x0, t, mask_id, eps=eps, generator=gen, keep_ends=keep_ends, keep_first=keep_first)
    return noisy.reshape(N, n_t, T)


def _stratified_passes(windows, t_grid, mask_id, eps, gen, keep_first, keep_ends, rows_per_draw):
    """The released Dream loop: for each group of ``rows_per_draw`` windows (its --batch_size), for
    each of the n_t passes, one ``noise_stratified`` call (u0, then the (B, T) uniforms)."""
    if not keep_ends:
        raise ValueError("the stratified noise never masks the first or last position: keep_ends must be True")
    N, T = windows.shape
    out = torch.empty((N, len(t_grid), T), dtype=windows.dtype, device=windows.device)
    for j in range(0, N, rows_per_draw):
        for k in range(len(t_grid)):
            out[j:j + rows_per_draw, k], _, _ = noise_stratified(windows[j:j + rows_per_draw], mask_id, eps, gen)
    return out


# noise name -> passes (N, n_t, T) of the windows (srclib.choices.NOISES; params: prune.calibration.noise)
NOISES: dict[str, Callable[..., torch.Tensor]] = {"grid": _grid_passes, "stratified": _stratified_passes}
choices.check("calibration noises", NOISES, choices.NOISES)


def noised_passes(
    windows: torch.Tensor,
    t_grid: Sequence[float],
    mask_id: int,
    eps: float,
    seed: int,
    keep_first: bool,
    keep_ends: bool = False,
    *,
    noise: str,
    rows_per_draw: int = 1,
) -> torch.Tensor:
    """Every window n_t = len(t_grid) times, noised: (N, n_t, T) int64 (window-major, pass-minor),
    drawn from ONE generator seeded with ``seed``, independent of the calibration batching.

    noise: "grid" (pass k at t_grid[k]) | "stratified" (the released Dream forward process: the
    grid's values are ignored, t = (u0 + i / B) mod 1 per pass over the B = ``rows_per_draw``
    windows of one draw, the released --batch_size, 1 by default; ``keep_ends`` must be True).
    """
    if noise not in NOISES:
        raise ValueError(f"unknown calibration noise {noise!r}; allowed: {sorted(NOISES)}")
    if len(t_grid) < 1:
        raise ValueError("t_grid must hold at least one t")
    if rows_per_draw < 1:
        raise ValueError(f"rows_per_draw must be >= 1, got {rows_per_draw}")
    gen = torch.Generator(device=windows.device).manual_seed(int(seed))
    return NOISES[noise](windows, t_grid, mask_id, eps, gen, keep_first, keep_ends, rows_per_draw)


# ---- batches ------------------------------------------------------------------------------------
@dataclass
class PassBatch:
    """One forward's worth of passes: ids (B, T); weights (B, T) if already known, else None."""

    ids: torch.Tensor
    weights: torch.Tensor | None = None
    n_t: int = 1  # passes per window inside this batch (window-major order)


# ---- forward helpers ----------------------------------------------------------------------------
def _forward(model: nn.Module, ids: torch.Tensor, forward: Forward | None) -> None:
    """One calibration forward; ``forward(ids)`` (e.g. the adapter's ``logits``, which builds the
    model's own attention inputs) or plainly ``model(input_ids=ids)``. Ends at a StopForward."""
    try:
        if forward is not None:
            forward(ids)
        else:
            model(input_ids=ids)
    except StopForward:
        pass


@contextlib.contextmanager
def _stop_after(module: nn.Module) -> Iterator[None]:
    """End the model's forward right after ``module`` (e.g. the last block: no LM head)."""

    def hook(mod, args, out):
        raise StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def _recording(enabled: bool, chunk_size: int, stop_in: nn.Module | None = None) -> Iterator[Any]:
    """The attention-mass recorder (or None when not ``enabled``). ``stop_in`` (the last block):
    end the forward with StopForward as soon as an attention call inside it has been recorded,
    before that call's attention output (and so the block's output projection, its MLP and
    everything after) is computed. Assumes one attention call per block, as every adapter has."""
    if not enabled:
        yield None
        return
    if stop_in is None:
        with record_mass(chunk_size=chunk_size) as rec:
            yield rec
        return
    inside: list[bool] = []

    def enter(mod, args):
        inside.append(True)

    def after_call(rec) -> None:
        if inside:
            raise StopForward

    handle = stop_in.register_forward_pre_hook(enter)
    try:
        with record_mass(chunk_size=chunk_size, after_call=after_call) as rec:
            yield rec
    finally:
        handle.remove()


@contextlib.contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    """Eval mode, no grad, and no KV cache (``config.use_cache = False``, as the released code
    does): a cache object caught in block 0's kwargs would grow every time a block is re-run."""
    was = model.training
    config = getattr(model, "config", None)
    had_cache = getattr(config, "use_cache", None)
    model.eval()
    if had_cache is not None:
        config.use_cache = False
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was)
        if had_cache is not None:
            config.use_cache = had_cache


# ---- one-shot -----------------------------------------------------------------------------------
def run_one_shot(
    model: nn.Module,
    blocks: nn.ModuleList,
    linears: dict[str, nn.Linear],
    batches: Iterable[PassBatch],
    feed: Feed,
    weight_fn: WeightFn | None = None,
    *,
    chunk_size: int,
    desc: str = "calibration (one-shot)",
    forward: Forward | None = None,
) -> None:
    """Every batch through the dense model once; ``feed(name, x, w)`` for every linear in ``linears``.

    A batch without weights and a ``weight_fn``: the mass is recorded in the same forward, the
    linears' inputs are held until it ends, then fed with ``weight_fn(mass)``.
    """
    batches = list(batches)
    dev = devices.of(model)
    state: dict[str, Any] = {}

    def make_hook(name: str):
        def hook(mod, inp, out):
            x = inp[0]
            if state["stash"] is not None:
                state["stash"].append((name, x))
            else:
                feed(name, x, state["w"])
        return hook

    handles = [lin.register_forward_hook(make_hook(n)) for n, lin in linears.items()]
    try:
        with _eval(model), _stop_after(blocks[-1]):
            for b in progress(batches, desc, unit="batch"):
                online = b.weights is None and weight_fn is not None
                state["w"] = None if b.weights is None else b.weights.to(dev)
                state["stash"] = [] if online else None
                with _recording(online, chunk_size) as rec:
                    _forward(model, b.ids.to(dev), forward)
                if online:
                    w = weight_fn(rec.mass)  # (B, T)
                    for name, x in state["stash"]:
                        feed(name, x, w)
                state["stash"] = None
    finally:
        for h in handles:
            h.remove()


def record_pass_mass(
    model: nn.Module, blocks: nn.ModuleList, ids: torch.Tensor, chunk_size: int,
    forward: Forward | None = None, stop_at_mass: bool = True,
) -> torch.Tensor:
    """Attention mass (L, B, T) of one forward of ``ids`` (B, T) through the blocks (no LM head).

    stop_at_mass: the forward ends as soon as the last block's attention mass is recorded (its
    attention output, output projection and MLP are never computed; the mass is bit-identical);
    False: it ends after the whole last block."""
    with (_eval(model), _stop_after(blocks[-1]),
          _recording(True, chunk_size, stop_in=blocks[-1] if stop_at_mass else None) as rec):
        _forward(model, ids.to(devices.of(model)), forward)
    return rec.mass


# ---- sequential ---------------------------------------------------------------------------------
@dataclass
class _Stored:
    args: list[Any]  # positional args of block 0; args[0] = hidden states (B, T, d)
    kwargs: dict[str, Any]
    weights: torch.Tensor | None


def catch_block_inputs(
    model: nn.Module,
    blocks: nn.ModuleList,
    ids: torch.Tensor,
    record: bool = False,
    *,
    chunk_size: int,
    forward: Forward | None = None,
) -> tuple[list[Any], dict[str, Any], torch.Tensor | None]:
    """Block 0's positional args and kwargs for one forward of ``ids`` (B, T).

    Generic: a forward pre-hook (with_kwargs) stores whatever the model passes; no argument names
    are assumed. Without ``record`` the hook raises a sentinel (nothing after block 0 runs); with
    it the forward runs through the last block under the attention-mass recorder and the mass
    (L, B, T) is returned too.
    """
    store: dict[str, Any] = {}

    def pre_hook(mod, args, kwargs):
        store["args"], store["kwargs"] = list(args), dict(kwargs)
        if not record:
            raise StopForward

    handle = blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with _eval(model), _stop_after(blocks[-1]), _recording(record, chunk_size) as rec:
            _forward(model, ids, forward)
    finally:
        handle.remove()
    if "args" not in store:
        raise RuntimeError("block 0 was never called during the calibration forward")
    if not store["args"] or not isinstance(store["args"][0], torch.Tensor):
        raise RuntimeError(
            "block 0 did not receive its hidden states as the first positional argument; "
            "this model layout is not supported by the sequential calibration"
        )
    return store["args"], store["kwargs"], (rec.mass if record else None)


def _block_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def run_sequential(
    model: nn.Module,
    blocks: nn.ModuleList,
    prunable: Callable[[nn.Module], dict[str, nn.Linear]],
    batches: Iterable[PassBatch],
    start_block: Callable[[int], Callable[[str, torch.Tensor, "torch.Tensor | None"], None] | None],
    finish_block: Callable[[int], None],
    weight_fn: WeightFn | None = None,
    *,
    chunk_size: int,
    desc: str = "calibration (sequential)",
    forward: Forward | None = None,
) -> None:
    """Sequential calibration: block i+1 sees the outputs of the already pruned block i.

    start_block(i) -> feed(name, x, w) for block i's linears (names relative to the block), or
    None when block i needs no statistics; finish_block(i) prunes block i.
    """
    batches = list(batches)
    dev = devices.of(model)
    with _eval(model):
        stored: list[_Stored] = []
        for b in progress(batches, f"{desc}: block 0 inputs", unit="batch"):
            online = b.weights is None and weight_fn is not None
            args, kwargs, mass = catch_block_inputs(model, blocks, b.ids.to(dev), record=online,
                                                    chunk_size=chunk_size, forward=forward)
            w = weight_fn(mass) if online else (None if b.weights is None else b.weights.to(dev))
            stored.append(_Stored(args, kwargs, w))
        for i, block in enumerate(progress(blocks, desc, unit="block")):
            feed = start_block(i)
            if feed is not None:
                current: dict[str, Any] = {}

                def make_hook(name: str):
                    def hook(mod, inp, out):
                        feed(name, inp[0], current["w"])
                    return hook

                handles = [lin.register_forward_hook(make_hook(n)) for n, lin in prunable(block).items()]
                try:
                    for st in stored:
                        current["w"] = st.weights
                        block(*st.args, **st.kwargs)
                finally:
                    for h in handles:
                        h.remove()
            finish_block(i)
            if i + 1 < len(blocks):
                for st in stored:
                    st.args[0] = _block_output(block(*st.args, **st.kwargs))
