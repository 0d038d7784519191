"""The train stage: the tokenizer, tiny-ar, tiny-dlm (adapted from tiny-ar) and smollm2-135m.

``run(P)`` (params ``train``; no instances) trains the twins on data/raw's corpus
(:func:`srclib.train.twins.train_twins`), converts the SmolLM2 GGUF when data/raw holds one, and
writes models/<key>/ (atomically), metrics/train/<key>.json for the trained tiny models
(deterministic: the loss curve, perplexities and samples, no clock values),
metrics/train/loss_curves.csv (DVC plot: model, step, loss) and timing/train/<key>.json
(wall/CPU seconds, outside the DVC outputs).

All or nothing: the model folders, metrics files and loss curves are built beside their targets
and swapped in together once every model is trained (srclib.files.atomic_outputs), so a failure
while training tiny-dlm or converting the GGUF leaves every previous output as it was. The
corpus files and the GGUF are checked against data/raw's manifest before use.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from srclib import paths
from srclib.data.corpus import read_texts
from srclib.data.manifest import check_raw_file
from srclib.files import Outputs, atomic_outputs, write_json, write_text
from srclib.params import Params, TrainParams, as_dict, refuse_instance
from srclib.provenance import provenance
from srclib.train import smollm2
from srclib.train.twins import TWINS, train_twins

__all__ = ["TIMING_KEYS", "TrainResult", "split_timing", "run", "train_models", "interpretation"]

TIMING_KEYS = ("train_time_s", "step_time_s", "train_cpu_s", "tokenizer_time_s", "convert_time_s",
               "eval_time_s")  # wall/CPU clocks: kept out of the DVC metrics (byte-identical reruns)
PPL_OVER_UNIGRAM_BAR = 0.4  # the study's bar for a tiny model good enough to study (README)


@dataclass
class TrainResult:
    """What the notebook shows: per-model metrics (with clocks), the summary table, the loss curves
    as written (model, step, loss), the greedy samples, the timings and the reading of this run's
    metrics."""

    metrics: dict[str, dict[str, Any]]
    table: pd.DataFrame
    curves: pd.DataFrame
    samples: pd.DataFrame
    timing: dict[str, dict[str, Any]]
    interpretation: str


def split_timing(metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(deterministic metrics, timings) of one model's metrics dict."""
    det = {k: v for k, v in metrics.items() if k not in TIMING_KEYS}
    return det, {k: v for k, v in metrics.items() if k in TIMING_KEYS}


def _train(cfg: TrainParams, root: Path, out: Outputs) -> dict[str, dict[str, Any]]:
    """Train (and convert) every model into the staged folders of ``out``."""
    train_texts = read_texts(paths.corpus_file("train", root))
    val_texts = read_texts(paths.corpus_file("validation", root))
    gguf = next(iter(sorted(paths.gguf_dir(root).glob("*.gguf"))), None)
    if gguf is not None:
        check_raw_file(gguf)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        metrics = train_twins(cfg, train_texts, val_texts, {k: out.dir(paths.model_dir(k, root=root)) for k in TWINS})
        if gguf is not None:
            metrics[smollm2.KEY] = smollm2.convert_smollm2(
                gguf, out.dir(paths.model_dir(smollm2.KEY, root=root)), val_texts, cfg.eval_windows, cfg.seq_len)
        return metrics
    finally:
        torch.set_num_threads(old_threads)


def run(P: Params, instance: str | None = None, root: Path | None = None) -> TrainResult:
    """The train stage (no instances): :func:`train_models` with params ``P.train``."""
    refuse_instance("train", instance)
    return train_models(P.train, root=root)


def train_models(cfg: TrainParams, root: Path | None = None) -> TrainResult:
    """Train and write everything the stage outputs (module docstring); return what to show."""
    root = Path(root) if root is not None else paths.ROOT
    timing: dict[str, dict[str, Any]] = {}
    rows, samples = [], []
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["model", "step", "loss"])
    with atomic_outputs() as out:
        metrics = _train(cfg, root, out)
        for key, m in metrics.items():
            det, timing[key] = split_timing(m)
            if key == smollm2.KEY:  # converted, not trained: its perplexity is shown, not tracked
                rows.append({"model": key, "ppl": m["ppl"], "ppl_kind": m["ppl_kind"], "n_params": m["n_params"]})
                continue
            write_json(out.file(paths.train_metrics(key, root)),
                       {**det, "provenance": provenance(params={"train": as_dict(cfg)})})
            for step, loss in enumerate(m["loss"], start=1):
                writer.writerow([key, step, f"{loss:.6g}"])
            rows.append({"model": key, "ppl": m["ppl"], "ppl_kind": m["ppl_kind"], "unigram_ppl": m["unigram_ppl"],
                         "ppl_over_unigram": m["ppl_over_unigram"], "distinct_2": m["distinct_2"],
                         "n_params": m["n_params"], **timing[key]})
            samples.extend({"model": key, **s} for s in m["samples"])
        write_text(out.file(paths.train_curves(root)), buf.getvalue())
    for key, t in timing.items():  # clocks: outside the DVC outputs, written once those are in place
        write_json(paths.train_timing(key, root), t)
    return TrainResult(metrics=metrics, table=pd.DataFrame(rows).set_index("model"),
                       curves=pd.read_csv(io.StringIO(buf.getvalue())), samples=pd.DataFrame(samples),
                       timing=timing,
                       interpretation=interpretation({k: metrics[k] for k in TWINS}, metrics.get(smollm2.KEY)))


def _tail(loss: list[float], n: int = 10) -> str:
    """'mean loss of the last n steps X' over the last min(n, steps) steps."""
    tail = loss[-n:]
    return f"mean loss of the last {len(tail)} steps {sum(tail) / len(tail):.3f}"


def interpretation(twins: dict[str, dict[str, Any]], smol: dict[str, Any] | None = None) -> str:
    """The measured outcome of this run, from the metrics of the twins (and smollm2-135m's)."""
    ar, dlm = twins["tiny-ar"], twins["tiny-dlm"]
    uni = ar["unigram_ppl"]
    n_win, seq = ar["eval_windows"], ar["seq_len"]
    verdict = {True: "meets", False: "misses"}
    lines = [
        f"On the same {n_win} held-out windows of {seq} tokens (unigram baseline perplexity {uni:.1f}):",
        f"- **tiny-ar**: perplexity {ar['ppl']:.1f}, {ar['ppl_over_unigram']:.2f}x unigram "
        f"({len(ar['loss'])} steps; {_tail(ar['loss'])}).",
        f"- **tiny-dlm** (adapted from tiny-ar): ELBO perplexity {dlm['ppl']:.1f} "
        f"({dlm['eval_mc_num']} Monte-Carlo masks per window; an upper bound on its perplexity), "
        f"{dlm['ppl_over_unigram']:.2f}x unigram, so it {verdict[dlm['ppl_over_unigram'] <= PPL_OVER_UNIGRAM_BAR]} "
        f"the study's bar of {PPL_OVER_UNIGRAM_BAR}x ({len(dlm['loss'])} steps; {_tail(dlm['loss'])}).",
        f"- tiny-dlm / tiny-ar perplexity: {dlm['ppl'] / ar['ppl']:.2f} (ELBO bound vs true perplexity).",
    ]
    if ar["samples"]:
        lines.append(f"- Greedy samples' distinct-2: tiny-ar {ar['distinct_2']:.2f}, tiny-dlm "
                     f"{dlm['distinct_2']:.2f} (1.00 = no repeated bigram).")
    if smol is not None:
        lines.append(f"- smollm2-135m (converted, not trained): perplexity {smol['ppl']:.1f} on "
                     f"{smol['eval_windows']} windows of its own tokenizer (not comparable with the "
                     "tiny models' numbers: another vocabulary).")
    return "\n".join(lines)
