"""Sink trajectories (method.md 2), one module per concern; this package imports nothing.

- ``store``: the ``Trajectory`` record, its safetensors file, run names (random-init twins).
- ``record``: prompts and the recording of a trajectory (DLM sampler, AR greedy decoding).
- ``stats``: sink statistics of a trajectory (the variance stage's computation).

The stages live in ``srclib.stages.collect`` and ``srclib.stages.variance``.
"""
