"""One module per pipeline stage; each exposes ``run(cfg, ...)`` taking its params object.

A stage module is where params, paths and the library meet: it reads its inputs, calls the
library, writes its outputs atomically and returns what the notebook shows. This package imports
nothing itself, so a notebook importing ``srclib.stages.prune`` reaches only prune's code (the
import closure dvc.yaml lists as the stage's deps; tests/test_dvc_deps.py checks it).
"""
