"""One module per pipeline stage; each exposes ``run(P, instance=None, root=None)``.

P is the whole validated ``srclib.params.Params`` and ``instance`` the stage's DVC instance name
(prune, evaluate: required; collect: a model key, None or "" for every model; the other stages
have none and refuse one); the stage derives its settings and inputs from P itself
(tests/test_stage_interface.py checks the signatures and the notebooks' calls).

A stage module is where params, paths and the library meet: it reads its inputs, calls the
library, writes its outputs atomically and returns what the notebook shows. This package imports
nothing itself, so a notebook importing ``srclib.stages.prune`` reaches only prune's code (the
import closure dvc.yaml lists as the stage's deps; tests/test_dvc_deps.py checks it).
"""
