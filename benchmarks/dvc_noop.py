"""How long a no-op `dvc repro` takes on a complete run of the study.

Run it in a repository where `dvc repro` has finished (every stage up to date): it times
``dvc repro`` (which must report "Data and pipelines are up to date") ``--repeats`` times and
prints the median wall time, the number of stages, and the ratio to the 3 s goal. ``--profile``
adds the share of one run's time spent hashing deps and parsing YAML (cProfile, in-process).

    python benchmarks/dvc_noop.py [--repo PATH] [--repeats 5] [--profile]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

GOAL_S = 3.0


def _dvc(repo: Path) -> list[str]:
    exe = Path(sys.executable).with_name("dvc")
    return [str(exe) if exe.exists() else "dvc"]


def time_repro(repo: Path, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run([*_dvc(repo), "repro"], cwd=repo, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if out.returncode != 0 or "up to date" not in out.stdout:
            raise SystemExit(f"dvc repro was not a no-op in {repo}:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return times


def n_stages(repo: Path) -> int:
    out = subprocess.run([*_dvc(repo), "stage", "list", "--name-only"], cwd=repo, capture_output=True,
                         text=True, check=True)
    return len(out.stdout.split())


def profile(repo: Path) -> dict[str, float]:
    """Seconds of one in-process `dvc repro` by where they go (cumulative, overlapping)."""
    import cProfile
    import os
    import pstats

    from dvc.cli import main as dvc_main

    prof = cProfile.Profile()
    cwd = os.getcwd()
    os.chdir(repo)
    try:
        prof.runcall(dvc_main, ["repro", "-q"])
    finally:
        os.chdir(cwd)
    stats = pstats.Stats(prof)
    total = max(v[3] for v in stats.stats.values())
    def cum(pred) -> float:
        return max((v[3] for k, v in stats.stats.items() if pred(k)), default=0.0)
    return {
        "total_s": total,
        "yaml_load_s": cum(lambda k: k[2] == "load" and "ruamel" in k[0]),
        "hashing_s": cum(lambda k: k[2] in ("build", "_build_tree") and "dvc_data" in k[0]),
        "params_read_s": cum(lambda k: k[2] == "read_params" and "dependency" in k[0]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    times = time_repro(args.repo, args.repeats)
    med = statistics.median(times)
    out = {"stages": n_stages(args.repo), "repeats": args.repeats, "median_s": round(med, 2),
           "min_s": round(min(times), 2), "max_s": round(max(times), 2), "ratio_to_3s_goal": round(med / GOAL_S, 2)}
    if args.profile:
        out["profile"] = {k: round(v, 2) for k, v in profile(args.repo).items()}
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
