"""Train stage: the tokenizer, tiny-ar, tiny-dlm (adapted from tiny-ar) and the SmolLM2 conversion.

- ``train_tokenizer``: ByteLevel BPE on the corpus train split; special tokens [BOS], [EOS], [PAD],
  [MASK] (ids 0..3); the post-processor prepends [BOS]. Deterministic.
- Token stream: every passage is encoded without [BOS] and followed by [EOS]; the passages are
  concatenated in file order. A window is [BOS] + seq_len - 1 consecutive stream tokens.
  Training windows start at uniformly random stream offsets (seeded ``torch.Generator``);
  held-out windows are the first ``eval_windows`` non-overlapping chunks of the validation stream.
- ``train_ar``: next-token cross-entropy, AdamW(0.9, 0.95), weight decay on matrices only (not on
  norm gains), gradient clipping, linear warmup then cosine decay to ``min_lr``.
- ``adapt_dlm``: tiny-dlm starts from tiny-ar's weights, bidirectional attention, shifted logits
  (the output at i-1 predicts token i, as Dream). The LLaDA/MDLM objective with a low-discrepancy t:
  t_j = ((u + j/B) mod 1) clamped to >= eps (u ~ U(0, 1), one per batch); every token but position
  0 is masked with probability t_j; loss = sum over masked tokens of CE / t_j, divided by B*T.
  Logits are computed only at masked positions (backbone -> hidden states -> gather -> head).
- Held-out metrics: AR perplexity (``srclib.likelihood.causal_perplexity``), DLM ELBO perplexity
  (``srclib.likelihood.elbo_perplexity``, position 0 kept), both on tokens 1..T-1 of the same
  windows; add-one smoothed unigram perplexity of the train split on those tokens; greedy samples
  (AR: KV-cache greedy decoding; DLM: ``srclib.diffusion.generate``, low-confidence remasking).
- ``run_train``: the stage: everything above, models written atomically to
  ``paths.model_dir(key, root=out_root)``; returns per-model metrics for metrics/train/<key>.json.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from srclib import paths
from srclib.data import read_texts
from srclib.files import atomic_dir
from srclib.models.base import write_marker
from srclib.models.tiny import TinyConfig, TinyLM

__all__ = [
    "SPECIAL_TOKENS", "Schedule", "train_tokenizer", "token_stream", "eval_windows",
    "sample_windows", "lr_at", "tiny_config", "train_ar", "dlm_from_ar", "adapt_dlm", "dlm_loss", "stratified_t",
    "unigram_perplexity", "greedy_ar", "distinct_n", "run_train",
]

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[BOS]", "[EOS]", "[PAD]", "[MASK]")


# ---- data ----------------------------------------------------------------------------------
def train_tokenizer(corpus_jsonl: str | Path, vocab_size: int, out_dir: str | Path | None = None):
    """ByteLevel BPE trained on ``corpus_jsonl`` (the TRAIN split): ``vocab_size`` learned tokens
    (the 256 bytes included) plus the 4 special tokens at ids 0..3; adds [BOS] in front of every
    encoded text. Returns a ``PreTrainedTokenizerFast``; saved to ``out_dir`` when given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 260:
        raise ValueError(f"vocab_size must be >= 260 (256 bytes + merges), got {vocab_size}")
    texts = read_texts(corpus_jsonl)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size + len(SPECIAL_TOKENS), special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("[BOS]")
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A", pair="[BOS] $A [BOS] $B", special_tokens=[("[BOS]", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]", mask_token="[MASK]"
    )
    if out_dir is not None:
        fast.save_pretrained(out_dir)
    return fast


def token_stream(tokenizer, passages: Sequence[str]) -> torch.Tensor:
    """(N,) int64: every passage's tokens (no [BOS]) followed by [EOS], concatenated in order."""
    enc = tokenizer(list(passages), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    flat: list[int] = []
    for ids in enc:
        flat.extend(ids)
        flat.append(eos)
    return torch.tensor(flat, dtype=torch.int64)


def _window(stream: torch.Tensor, start: int, seq_len: int, bos: int) -> torch.Tensor:
    return torch.cat([torch.tensor([bos]), stream[start:start + seq_len - 1]])


def eval_windows(stream: torch.Tensor, n: int, seq_len: int, bos: int) -> torch.Tensor:
    """(n, seq_len): [BOS] + the first n non-overlapping (seq_len - 1)-token chunks of ``stream``."""
    body = seq_len - 1
    if n * body > stream.numel():
        raise ValueError(
            f"eval_windows={n} x seq_len={seq_len} needs {n * body} held-out tokens, the split has "
            f"{stream.numel()}"
        )
    return torch.stack([_window(stream, i * body, seq_len, bos) for i in range(n)])


def sample_windows(stream: torch.Tensor, batch: int, seq_len: int, bos: int, gen: torch.Generator) -> torch.Tensor:
    """(batch, seq_len) training windows at uniformly random stream offsets."""
    hi = stream.numel() - (seq_len - 1)
    if hi < 1:
        raise ValueError(f"the training stream ({stream.numel()} tokens) is shorter than seq_len={seq_len}")
    starts = torch.randint(0, hi, (batch,), generator=gen)
    idx = starts[:, None] + torch.arange(seq_len - 1)[None, :]  # (B, T-1)
    return torch.cat([torch.full((batch, 1), bos, dtype=torch.int64), stream[idx]], dim=1)


# ---- optimisation ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    """steps; peak lr; linear warmup steps; cosine floor min_lr; weight_decay; grad_clip."""

    steps: int
    lr: float
    warmup: int
    min_lr: float
    weight_decay: float
    grad_clip: float

    def __post_init__(self) -> None:
        if self.steps < 1 or self.warmup < 0 or self.lr <= 0 or self.min_lr < 0 or self.grad_clip <= 0:
            raise ValueError(f"invalid schedule {self}: need steps >= 1, warmup >= 0, lr > 0, min_lr >= 0, "
                             f"grad_clip > 0")


def lr_at(step: int, s: Schedule) -> float:
    """Linear warmup to ``lr`` over ``warmup`` steps, then cosine from ``lr`` to ``min_lr`` at ``steps``."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    span = max(1, s.steps - s.warmup)
    progress = min(1.0, (step - s.warmup) / span)
    return s.min_lr + 0.5 * (s.lr - s.min_lr) * (1.0 + math.cos(math.pi * progress))


def _optimizer(model: torch.nn.Module, s: Schedule) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=s.lr, betas=(0.9, 0.95),
    )


def _train_loop(model, s: Schedule, loss_fn: Callable[[int], torch.Tensor], desc: str) -> dict[str, Any]:
    opt = _optimizer(model, s)
    model.train()
    losses: list[float] = []
    t0, c0 = time.perf_counter(), time.process_time()
    for step in tqdm(range(s.steps), desc=desc, mininterval=5.0):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, s)
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        opt.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"{desc}: non-finite loss {value} at step {step}")
        losses.append(value)
    model.eval()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    # process CPU seconds: a load-independent companion of the wall time (all threads summed)
    return {"loss": losses, "train_time_s": wall, "step_time_s": wall / s.steps, "train_cpu_s": cpu,
            "threads": torch.get_num_threads()}


def tiny_config(arch: dict[str, Any], tokenizer, *, causal: bool, shift: bool, max_len: int) -> TinyConfig:
    """TinyConfig from the arch dict (n_layers, hidden_size, n_heads, mlp_hidden, rope_theta) and the
    tokenizer's vocabulary and special ids. ``max_len``: the longest sequence the model will see."""
    allowed = {"n_layers", "hidden_size", "n_heads", "mlp_hidden", "rope_theta", "n_kv_heads"}
    unknown = set(arch) - allowed
    if unknown:
        raise ValueError(f"arch has unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    return TinyConfig(
        vocab_size=len(tokenizer), max_position_embeddings=max_len, causal=causal, shift_logits=shift,
        mask_token_id=None if causal else tokenizer.mask_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **arch,
    )


def train_ar(model: TinyLM, stream: torch.Tensor, *, seq_len: int, batch_size: int, schedule: Schedule,
             bos: int, generator: torch.Generator) -> dict[str, Any]:
    """Next-token CE on random [BOS]-led windows; returns {"loss": [...], "train_time_s", "step_time_s"}."""
    if not model.config.causal:
        raise ValueError("train_ar needs a causal TinyLM (config.causal=True)")

    def loss_fn(step: int) -> torch.Tensor:
        x = sample_windows(stream, batch_size, seq_len, bos, generator)  # (B, T)
        logits = model(input_ids=x).logits  # (B, T, V)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))

    return _train_loop(model, schedule, loss_fn, "tiny-ar")


def stratified_t(batch: int, eps: float, generator: torch.Generator) -> torch.Tensor:
    """(B,) low-discrepancy times t_j = ((u + j/B) mod 1) clamped to >= eps, u ~ U(0, 1)."""
    u = torch.rand((), generator=generator)
    t = (u + torch.arange(batch, dtype=torch.float32) / batch) % 1.0
    return t.clamp_min(eps)


def dlm_loss(model: TinyLM, x0: torch.Tensor, t: torch.Tensor, mask_id: int,
             generator: torch.Generator) -> torch.Tensor:
    """Masked-diffusion loss of a shifted TinyLM: sum_masked CE / t_j, over B*T (module docstring).

    x0: (B, T) clean windows (position 0 = [BOS], never masked); t: (B,) masking probabilities.
    """
    B, T = x0.shape
    masked = torch.rand(B, T, generator=generator) < t[:, None]  # (B, T)
    masked[:, 0] = False
    xt = torch.where(masked, torch.full_like(x0, mask_id), x0)
    h = model.model.hidden(xt)  # (B, T, d)
    b_idx, pos = masked.nonzero(as_tuple=True)  # (M,), (M,)
    src = pos - 1 if model.config.shift_logits else pos  # shifted: output i-1 predicts token i
    logits = model.lm_head(h[b_idx, src])  # (M, V)
    ce = F.cross_entropy(logits, x0[b_idx, pos], reduction="none")  # (M,)
    return (ce / t[b_idx]).sum() / (B * T)


def dlm_from_ar(ar_model: TinyLM, mask_id: int, max_len: int) -> TinyLM:
    """A bidirectional, shifted TinyLM holding a copy of the AR twin's weights."""
    cfg = copy.deepcopy(ar_model.config)
    cfg.causal, cfg.shift_logits = False, True
    cfg.mask_token_id, cfg.max_position_embeddings = int(mask_id), max_len
    model = TinyLM(cfg)
    model.load_state_dict(ar_model.state_dict())
    return model


def adapt_dlm(ar_model: TinyLM, tokenizer, stream: torch.Tensor, *, seq_len: int, batch_size: int,
              schedule: Schedule, eps: float, generator: torch.Generator, max_len: int):
    """tiny-dlm from tiny-ar's weights (bidirectional, shifted); returns (model, train record)."""
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    model = dlm_from_ar(ar_model, tokenizer.mask_token_id, max_len)
    bos, mask_id = tokenizer.bos_token_id, tokenizer.mask_token_id

    def loss_fn(step: int) -> torch.Tensor:
        x0 = sample_windows(stream, batch_size, seq_len, bos, generator)  # (B, T)
        t = stratified_t(batch_size, eps, generator)  # (B,)
        return dlm_loss(model, x0, t, mask_id, generator)

    return model, _train_loop(model, schedule, loss_fn, "tiny-dlm")


# ---- evaluation ------------------------------------------------------------------------------
def unigram_perplexity(train_stream: torch.Tensor, windows: torch.Tensor, vocab_size: int) -> float:
    """Add-one smoothed unigram model of the train stream, perplexity on tokens 1..T-1 of ``windows``."""
    counts = torch.bincount(train_stream, minlength=vocab_size).double() + 1.0  # (V,)
    logp = counts.log() - counts.sum().log()
    scored = windows[:, 1:].reshape(-1)
    return float(torch.exp(-logp[scored].mean()))


@torch.no_grad()
def greedy_ar(model: TinyLM, prompt: torch.Tensor, n_new: int) -> torch.Tensor:
    """Greedy decoding with the KV cache: (B, P) -> (B, P + n_new)."""
    ids = prompt
    out = model(input_ids=prompt, use_cache=True)
    for i in range(n_new):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        ids = torch.cat([ids, nxt], dim=1)
        if i < n_new - 1:
            out = model(input_ids=nxt, past_key_values=out["past_key_values"], use_cache=True)
    return ids


def distinct_n(token_lists: Sequence[Sequence[int]], n: int = 2) -> float:
    """Fraction of distinct n-grams among all n-grams of the given sequences (1.0 = no repetition)."""
    grams = [tuple(seq[i:i + n]) for seq in token_lists for i in range(len(seq) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _samples(tokenizer, prompts: torch.Tensor, generated: torch.Tensor) -> tuple[list[dict[str, str]], float]:
    P = prompts.shape[1]
    rows, conts = [], []
    for p, g in zip(prompts.tolist(), generated[:, P:].tolist()):
        conts.append(g)
        rows.append({"prompt": tokenizer.decode(p), "completion": tokenizer.decode(g)})
    return rows, distinct_n(conts, 2)


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _save(model, tokenizer, folder: Path, key: str, **info: Any) -> Path:
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_marker(tmp, key, **info)
    return folder


def _as_schedule(d: dict[str, Any], weight_decay: float, grad_clip: float, what: str) -> Schedule:
    need = {"steps", "lr", "warmup", "min_lr"}
    missing, unknown = need - set(d), set(d) - need - {"eps"}
    if missing or unknown:
        raise ValueError(f"{what} needs keys {sorted(need)} (dlm also 'eps'); missing {sorted(missing)}, "
                         f"unknown {sorted(unknown)}")
    return Schedule(steps=int(d["steps"]), lr=float(d["lr"]), warmup=int(d["warmup"]), min_lr=float(d["min_lr"]),
                    weight_decay=weight_decay, grad_clip=grad_clip)


# ---- the stage -------------------------------------------------------------------------------
def run_train(
    *,
    train_jsonl: str | Path,
    validation_jsonl: str | Path,
    gguf_file: str | Path | None,
    out_root: str | Path,
    tokenizer_vocab: int,
    seq_len: int,
    batch_size: int,
    arch: dict[str, Any],
    ar: dict[str, Any],
    dlm: dict[str, Any],
    weight_decay: float,
    grad_clip: float,
    eval_windows_n: int,
    eval_mc_num: int,
    n_samples: int,
    sample_prompt_tokens: int,
    sample_gen_length: int,
    sample_block_length: int,
    seed: int,
    threads: int,
    max_len: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Build the tokenizer, tiny-ar, tiny-dlm and (if ``gguf_file``) smollm2-135m; write each to
    ``paths.model_dir(key, root=out_root)`` atomically; return {key: metrics}.

    train_jsonl / validation_jsonl: corpus splits (JSONL with a "text" field).
    gguf_file: SmolLM2 GGUF to dequantise once into smollm2-135m (None: skip).
    tokenizer_vocab: BPE vocabulary before the 4 special tokens. seq_len, batch_size: windows.
    arch: {n_layers, hidden_size, n_heads, mlp_hidden, rope_theta} of both twins.
    ar: {steps, lr, warmup, min_lr}; dlm: {steps, lr, warmup, min_lr, eps}.
    weight_decay, grad_clip: AdamW weight decay (matrices only) and gradient-norm clip.
    eval_windows_n: held-out windows for the perplexities; eval_mc_num: MC rows per window (ELBO).
    n_samples, sample_prompt_tokens, sample_gen_length, sample_block_length: greedy samples from
      the first n_samples validation passages ([BOS] + sample_prompt_tokens - 1 tokens as prompt);
      the DLM decodes one token per step in blocks of sample_block_length.
    seed: every random draw (init, batches, masks, MC) derives from it. threads: torch threads.

    Metrics per tiny model: loss (per step), train_time_s, step_time_s, ppl ("tiny-ar": true
    perplexity; "tiny-dlm": ELBO perplexity, an upper bound), unigram_ppl, ppl_over_unigram,
    samples [{prompt, completion}], distinct_2, n_params, plus shared data sizes. smollm2-135m:
    conversion time and its true perplexity on validation windows of its own tokenizer.
    """
    from srclib.diffusion import generate
    from srclib.likelihood import causal_perplexity, elbo_perplexity, model_logits_fn
    from srclib.models import MODELS

    if sample_gen_length % sample_block_length:
        raise ValueError(f"sample_gen_length ({sample_gen_length}) must be a multiple of "
                         f"sample_block_length ({sample_block_length})")
    out_root = Path(out_root)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t_start = time.perf_counter()
        tok = train_tokenizer(train_jsonl, tokenizer_vocab)
        train_stream = token_stream(tok, read_texts(train_jsonl))
        val_passages = read_texts(validation_jsonl)
        val_stream = token_stream(tok, val_passages)
        bos, V = tok.bos_token_id, len(tok)
        windows = eval_windows(val_stream, eval_windows_n, seq_len, bos)  # (N, T)
        uni = unigram_perplexity(train_stream, windows, V)
        # RoPE has no learned positions: max_len only bounds what the model accepts (evaluation
        # contexts are longer than training windows)
        max_len = max(seq_len, sample_prompt_tokens + sample_gen_length, max_len or 0)
        data_info = {"vocab_size": V, "train_tokens": int(train_stream.numel()),
                     "validation_tokens": int(val_stream.numel()), "eval_windows": eval_windows_n,
                     "seq_len": seq_len, "tokenizer_time_s": time.perf_counter() - t_start}
        prompts = torch.stack([
            torch.tensor(tok(p)["input_ids"][:sample_prompt_tokens]) for p in val_passages[:n_samples]
        ]) if n_samples else torch.zeros(0, sample_prompt_tokens, dtype=torch.int64)
        if prompts.shape[0] and prompts.shape[1] != sample_prompt_tokens:
            raise ValueError(f"a validation passage is shorter than sample_prompt_tokens={sample_prompt_tokens}")

        # tiny-ar
        torch.manual_seed(seed)
        ar_model = TinyLM(tiny_config(arch, tok, causal=True, shift=False, max_len=max_len))
        gen = torch.Generator().manual_seed(seed)
        ar_rec = train_ar(ar_model, train_stream, seq_len=seq_len, batch_size=batch_size,
                          schedule=_as_schedule(ar, weight_decay, grad_clip, "ar"), bos=bos, generator=gen)
        ar_ad = MODELS["tiny-ar"]
        ar_ppl = causal_perplexity(model_logits_fn(ar_model, ar_ad), windows)
        ar_samples, ar_d2 = _samples(tok, prompts, greedy_ar(ar_model, prompts, sample_gen_length)) \
            if n_samples else ([], 0.0)
        _save(ar_model, tok, paths.model_dir("tiny-ar", root=out_root), "tiny-ar", seed=seed)

        # tiny-dlm
        dlm_sched = _as_schedule(dlm, weight_decay, grad_clip, "dlm")
        dlm_model, dlm_rec = adapt_dlm(ar_model, tok, train_stream, seq_len=seq_len, batch_size=batch_size,
                                       schedule=dlm_sched, eps=float(dlm["eps"]), generator=gen, max_len=max_len)
        dlm_ad = MODELS["tiny-dlm"]
        dlm_ppl = elbo_perplexity(model_logits_fn(dlm_model, dlm_ad), windows, mask_id=tok.mask_token_id,
                                  mc_num=eval_mc_num, generator=torch.Generator().manual_seed(seed),
                                  keep_first=True)
        dlm_samples, dlm_d2 = ([], 0.0)
        if n_samples:
            out = generate(dlm_model, prompts, steps=sample_gen_length, gen_length=sample_gen_length,
                           block_length=sample_block_length, mask_id=tok.mask_token_id, adapter=dlm_ad,
                           generator=torch.Generator().manual_seed(seed))
            dlm_samples, dlm_d2 = _samples(tok, prompts, out)
        _save(dlm_model, tok, paths.model_dir("tiny-dlm", root=out_root), "tiny-dlm", seed=seed,
              init="tiny-ar")

        metrics = {
            "tiny-ar": {**ar_rec, **data_info, "ppl": ar_ppl, "ppl_kind": "causal", "unigram_ppl": uni,
                        "ppl_over_unigram": ar_ppl / uni, "samples": ar_samples, "distinct_2": ar_d2,
                        "n_params": _n_params(ar_model)},
            "tiny-dlm": {**dlm_rec, **data_info, "ppl": dlm_ppl, "ppl_kind": "elbo", "unigram_ppl": uni,
                         "ppl_over_unigram": dlm_ppl / uni, "samples": dlm_samples, "distinct_2": dlm_d2,
                         "n_params": _n_params(dlm_model), "eval_mc_num": eval_mc_num},
        }
        logger.info("tiny-ar ppl %.1f, tiny-dlm ELBO ppl %.1f, unigram %.1f", ar_ppl, dlm_ppl, uni)

        if gguf_file is not None:
            metrics["smollm2-135m"] = _smollm2(gguf_file, out_root, val_passages, eval_windows_n, seq_len)
        return metrics
    finally:
        torch.set_num_threads(old_threads)


def _smollm2(gguf_file, out_root: Path, val_passages, n_windows: int, seq_len: int) -> dict[str, Any]:
    from srclib.likelihood import causal_perplexity, model_logits_fn
    from srclib.models import MODELS
    from srclib.models.hf_causal import convert_gguf

    key = "smollm2-135m"
    t0 = time.perf_counter()
    folder = convert_gguf(gguf_file, paths.model_dir(key, root=out_root), key)
    convert_s = time.perf_counter() - t0
    adapter = MODELS[key]
    model, tok = adapter.load(folder)
    stream = token_stream(tok, val_passages)
    # SmolLM2 has no BOS: windows are plain non-overlapping seq_len chunks, tokens 1..T-1 scored
    n = min(n_windows, stream.numel() // seq_len)
    windows = stream[: n * seq_len].view(n, seq_len)
    t1 = time.perf_counter()
    ppl = causal_perplexity(model_logits_fn(model, adapter), windows, forward_batch=8)
    return {"convert_time_s": convert_s, "ppl": ppl, "ppl_kind": "causal", "eval_windows": n,
            "eval_time_s": time.perf_counter() - t1, "n_params": _n_params(model), "vocab_size": len(tok)}


# ---- the stage, as the notebook calls it -----------------------------------------------------
TIMING_KEYS = ("train_time_s", "step_time_s", "train_cpu_s", "tokenizer_time_s", "convert_time_s",
               "eval_time_s")  # wall/CPU clocks: kept out of the DVC metrics (byte-identical reruns)


def split_timing(metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(deterministic metrics, timings) of one model's metrics dict."""
    det = {k: v for k, v in metrics.items() if k not in TIMING_KEYS}
    return det, {k: v for k, v in metrics.items() if k in TIMING_KEYS}


def run_stage(cfg: Any, *, root: str | Path | None = None) -> dict[str, Any]:
    """The train stage: ``run_train`` with ``cfg`` (srclib.params.TrainParams), then write
    metrics/train/<key>.json for the trained tiny models (deterministic: no clock values; the loss
    curve, perplexities and samples), metrics/train/loss_curves.csv (DVC plot: model, step, loss)
    and timing/train/<key>.json (wall/CPU seconds, outside the DVC outputs). Returns {"metrics", "table", "samples",
    "timing"} for display."""
    import csv
    import io as _io

    import pandas as pd

    from srclib.files import write_json, write_text
    from srclib.params import as_dict
    from srclib.provenance import provenance

    root = Path(root) if root is not None else paths.ROOT
    metrics = run_train(
        train_jsonl=paths.corpus_file("train", root), validation_jsonl=paths.corpus_file("validation", root),
        gguf_file=next(iter(sorted(paths.gguf_dir(root).glob("*.gguf"))), None), out_root=root,
        tokenizer_vocab=cfg.tokenizer_vocab, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
        arch=as_dict(cfg.arch), ar=as_dict(cfg.ar), dlm=as_dict(cfg.dlm), weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip, eval_windows_n=cfg.eval_windows, eval_mc_num=cfg.eval_mc_num,
        n_samples=cfg.n_samples, sample_prompt_tokens=cfg.sample_prompt_tokens,
        sample_gen_length=cfg.sample_gen_length, sample_block_length=cfg.sample_block_length,
        seed=cfg.seed, threads=cfg.threads, max_len=cfg.max_len,
    )
    timing: dict[str, dict[str, Any]] = {}
    rows, samples = [], []
    buf = _io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["model", "step", "loss"])
    for key, m in metrics.items():
        det, timing[key] = split_timing(m)
        write_json(paths.train_timing(key, root), timing[key])
        if key == "smollm2-135m":  # converted, not trained: its perplexity is shown, not tracked
            rows.append({"model": key, "ppl": m["ppl"], "ppl_kind": m["ppl_kind"], "n_params": m["n_params"]})
            continue
        write_json(paths.train_metrics(key, root), {**det, "provenance": provenance(params={"train": as_dict(cfg)})})
        for step, loss in enumerate(m["loss"], start=1):
            writer.writerow([key, step, f"{loss:.6g}"])
        rows.append({"model": key, "ppl": m["ppl"], "ppl_kind": m["ppl_kind"], "unigram_ppl": m["unigram_ppl"],
                     "ppl_over_unigram": m["ppl_over_unigram"], "distinct_2": m["distinct_2"],
                     "n_params": m["n_params"], **timing[key]})
        samples.extend({"model": key, **s} for s in m["samples"])
    write_text(paths.train_curves(root), buf.getvalue())
    return {"metrics": metrics, "table": pd.DataFrame(rows).set_index("model"),
            "samples": pd.DataFrame(samples), "timing": timing}
