"""Pruning (method.md 3-4). Import what you need from the submodules; this file imports nothing,
so a user of one module does not load (or depend on) the rest:

* ``registry``: ``PRUNERS = {name: LayerPruner}`` (magnitude, wanda, sparsegpt);
* ``base``, ``magnitude``, ``wanda``, ``sparsegpt``: the per-layer pruners;
* ``masks``: unstructured and N:M mask selection (``PATTERNS``, ``select_mask``);
* ``weighting``: the weighting axis (uniform | sink | stability);
* ``owl``: outlier-weighted layer-wise sparsity;
* ``core``: ``prune_model`` (calibration passes, token weights, sequential or one-shot);
* ``checkpoint``: saving and reading pruned checkpoints and masks.

* ``plan``: the run's decisions (torch-free): ``resolve(spec, dlm, shift) -> RunPlan`` (needs data,
  inputs, noise, one-shot, the pruners' options, the resolved choices the metrics record);
* ``calibration``: calibration windows, noised passes and the generic one-shot / sequential
  calibration forwards (moved here from srclib.calibration).

The prune stage itself (``run``) is srclib.stages.prune; the run spec is srclib.params.PruneSpec.
"""
