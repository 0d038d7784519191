"""How far one prune spec (and the prune stage's cfg) travels through srclib: issue 24's count of
"climbs back up".

Follows one object through a real pruning run on a test-size DLM (sink-aware SparseGPT, the
path that touches the most code: noised mass pre-pass, sequential Hessians, OBS solve), with
``sys.setprofile``: a *stay* is a srclib function that held the object (as an argument, as
``self`` or in its closure) when it was called; its *file* is where that function is written. Files
are numbered in the order the journey first enters them. A *climb back up* is a stay whose file was
entered earlier than the file of the stay it was called from (the journey returns to where it has
been: a pruning loop calling back into params.py, a calibration loop calling back into a closure of
core.py); each distinct (caller, callee) pair counts once however often a loop repeats it.

    python benchmarks/spec_journey.py            # counts and every climb, spec and cfg
    python benchmarks/spec_journey.py --json     # the counts as JSON

With the trained model in models/ (dvc repro train) it also follows the prune section (the stage's
cfg) through the real prune stage (``stage``), outputs written under a temporary root.

Counts of the tree this script runs in; the closing note of issue 24 gives the numbers before and
after the move of the prune run into srclib/pruning/.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from srclib import deps, params  # noqa: E402
from srclib.models import MODELS  # noqa: E402
from srclib.models.tiny import TinyLM, test_config  # noqa: E402
from srclib.pruning import calibration as cal  # noqa: E402
from srclib.pruning.checkpoint import run_prune  # noqa: E402

SRC = str(ROOT / "srclib")


def _file(code) -> str | None:
    f = code.co_filename
    return str(Path(f).relative_to(ROOT)) if f.startswith(SRC) else None


def _module(file: str) -> str:
    return file[:-3].replace("/", ".").removesuffix(".__init__")


def follow(target: Any, fn: Callable[[], Any]) -> dict[str, Any]:
    """Run ``fn()`` and follow ``target`` through every srclib frame that holds it; meanwhile note
    every callback (a call whose callee's module imports, directly or not, the caller's module)."""
    first: dict[str, int] = {}
    stays: set[tuple[str, str]] = set()
    climbs: set[tuple[str, str]] = set()
    callbacks: set[tuple[str, str]] = set()
    held: set[int] = set()  # ids of live frames that hold the target
    reach: dict[str, set[str]] = {}
    g = deps.graph(ROOT, parents=False)  # what a module's own import statements name

    def imports(file: str) -> set[str]:
        if file not in reach:
            seen: set[str] = set()
            todo = list(g.get(_module(file), ()))
            while todo:
                m = todo.pop()
                if m not in seen:
                    seen.add(m)
                    todo.extend(g.get(m, ()))
            reach[file] = seen - {_module(file)}
        return reach[file]

    def prof(frame, event, arg):
        if event == "return":
            held.discard(id(frame))
            return
        if event != "call":
            return
        file = _file(frame.f_code)
        if file is None:
            return
        back = frame.f_back
        back_file = None if back is None else _file(back.f_code)
        if back_file is not None and back_file != file and _module(back_file) in imports(file):
            callbacks.add((f"{back_file}:{back.f_code.co_qualname}", f"{file}:{frame.f_code.co_qualname}"))
        try:
            values = frame.f_locals.values()
        except Exception:  # noqa: BLE001 - a frame that cannot be read holds nothing we follow
            return
        if not any(v is target for v in values):
            return
        held.add(id(frame))
        first.setdefault(file, len(first))
        here = (file, frame.f_code.co_qualname)
        stays.add(here)
        up = frame.f_back
        while up is not None and id(up) not in held:
            up = up.f_back
        if up is not None:
            caller = (_file(up.f_code), up.f_code.co_qualname)
            if caller[0] is not None and first[file] < first[caller[0]]:
                climbs.add((f"{caller[0]}:{caller[1]}", f"{file}:{here[1]}"))

    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return {"stays": len(stays), "files": len(first), "climbs": len(climbs), "callbacks": len(callbacks),
            "climbs_back_up": len(climbs | callbacks),
            "climb_list": sorted(f"{a} -> {b}" for a, b in climbs),
            "callback_list": sorted(f"{a} -> {b}" for a, b in callbacks), "file_order": list(first)}


def _model() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(test_config()).eval()  # the test-size DLM (bidirectional, shifted, with a mask token)


def _stage_view(P, instance: str) -> dict[str, Any] | None:
    """The prune section (the stage's cfg) followed through the real prune stage on the trained
    model, outputs under a temporary root; None when models/<model> is not built (dvc repro train)."""
    import inspect

    from srclib import paths
    from srclib.stages import prune as stage

    if not (paths.ROOT / "models" / P.prune.instance(instance).model / "config.json").is_file():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        (root / "data" / "raw").symlink_to(paths.ROOT / "data" / "raw", target_is_directory=True)
        if "P" in inspect.signature(stage.run).parameters:  # run(P, instance, root)
            return follow(P.prune, lambda: stage.run(P, instance, root=root))
        return follow(P.prune, lambda: stage.run(P.prune, instance, P.model_entry(instance), root=root))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--instance", default="dlm-sparsegpt-sink-50-s0")
    args = ap.parse_args(argv)
    logging.disable(logging.INFO)
    P = params.load()
    cfg = P.prune
    spec = cfg.spec(args.instance)
    adapter = MODELS["tiny-dlm"]
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(3, 60, (4, 16), generator=g)
    calib = cal.Calibration(windows=windows, seed=0, windows_per_batch=2, mass_chunk_size=cfg.calibration.chunk_size)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        def prune(spec=spec):
            run_prune(model=(_model(), None, adapter), spec=spec, instance=args.instance,
                      out_dir=Path(tmp) / "p", metrics_path=Path(tmp) / "m.json", n_samples=4, seq_len=16,
                      seed=0, calibration=calib)

        out["spec"] = follow(spec, prune)

        def stage():
            s = cfg.spec(args.instance)
            prune(s)

        out["cfg"] = follow(cfg, stage)
    stage_view = _stage_view(P, args.instance)
    if stage_view is not None:
        out["stage"] = stage_view
    if args.json:
        print(json.dumps({k: {n: v[n] for n in ("stays", "files", "climbs", "callbacks", "climbs_back_up")}
                          for k, v in out.items()}))
        return 0
    for k, v in out.items():
        print(f"{k}: {v['stays']} stays in {v['files']} files; climbs back up: {v['climbs_back_up']} "
              f"({v['climbs']} into a file the {k} was in before, {v['callbacks']} callbacks)")
        for c in v["climb_list"]:
            print(f"    back: {c}")
        for c in v["callback_list"]:
            print(f"    callback: {c}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
