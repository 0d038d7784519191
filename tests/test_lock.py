"""The hashed lock (issue 15 item 9): pyproject.toml's pins, requirements/lock-cpu*.txt and
environment.yml agree, every locked package has a hash, and provenance records the lock's hash.
(Proposed as tests/test_lock.py.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from srclib import provenance
from srclib.files import sha256_file

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock-cpu.txt"
DEVLOCK = ROOT / "requirements" / "lock-cpu-dev.txt"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;\\,]+)", line)
        if m:
            out[_norm(m.group(1))] = m.group(3)
    return out


def _lock(path: Path) -> dict[str, str]:
    return _pins(path.read_text().splitlines())


def _public(version: str) -> str:
    return version.split("+", 1)[0]  # torch 2.13.0+cpu satisfies ==2.13.0


@pytest.fixture(scope="module")
def project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_direct_dependencies_are_pinned_to_the_lock(project):
    lock, dev = _lock(LOCK), _lock(DEVLOCK)
    for spec, locked in ((project["dependencies"], lock), (project["optional-dependencies"]["dev"], dev)):
        pins = _pins(spec)
        assert len(pins) == len(spec), f"unpinned direct dependency in {spec}"
        for name, version in pins.items():
            assert name in locked, f"{name} is not in the lock"
            assert _public(locked[name]) == version, f"{name}: pyproject {version}, lock {locked[name]}"


def test_dev_lock_holds_the_runtime_lock_unchanged():
    lock, dev = _lock(LOCK), _lock(DEVLOCK)
    assert {k: dev.get(k) for k in lock} == lock


def test_every_locked_package_has_a_hash():
    for path in (LOCK, DEVLOCK):
        blocks = re.split(r"\n(?=[A-Za-z0-9])", path.read_text())
        for block in blocks:
            if re.match(r"[A-Za-z0-9]", block):
                assert "--hash=sha256:" in block, f"{path.name}: no hash for {block.splitlines()[0]}"


def test_environment_yml_pins_are_pyproject_pins(project):
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip) == _pins(project["dependencies"] + project["optional-dependencies"]["dev"])
    assert _lock(LOCK)["torch"].endswith("+cpu")


def test_provenance_records_the_lock_hash(tmp_path, monkeypatch):
    from srclib import paths

    assert provenance.versions()[provenance.LOCK_FILE.as_posix()] == f"sha256:{sha256_file(LOCK)}"
    monkeypatch.setattr(paths, "ROOT", tmp_path)  # a checkout without a lock records None
    assert provenance.versions()[provenance.LOCK_FILE.as_posix()] is None
    assert "requirements/lock-cpu.txt" in provenance.provenance()["versions"]
