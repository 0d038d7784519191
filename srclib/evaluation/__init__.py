"""Evaluation: lm-eval's own tasks on local data, a registered ``LM`` for diffusion LMs, perplexity.

Modules (this package imports none of them itself, so importing one does not pull the rest):

* :mod:`.common` -- what the wrappers and perplexity share: the lm-eval seed, the generation
  sampler, per-request generators, a model's context length.
* :mod:`.tasks` -- lm-eval's OWN task YAMLs (prompts and metrics untouched) pointed at the arrow /
  jsonl files under ``data/raw/tasks``; an offline ``TaskManager``.
* :mod:`.lm` -- ``DiffusionLM``, the lm-eval ``LM`` registered as ``srclib-dlm`` (MC-ELBO
  log-likelihoods, diffusion generation).
* :mod:`.ar` -- lm-eval's ``hf`` model (``HFLM``) for causal models, with greedy KV decoding for
  models that have no ``generate``.
* :mod:`.harness` -- the LM chosen by ``adapter.causal``, ``lm_eval.simple_evaluate`` per task,
  result parsing.
* :mod:`.perplexity` -- held-out windows and their ELBO (DLM) or exact (AR) perplexity.
* :mod:`.__main__` -- ``python -m srclib.evaluation``: lm-eval's CLI with ``srclib-dlm``
  registered and ``--data_root`` for offline tasks.

The evaluate stage (params, paths, metrics JSON) is :mod:`srclib.stages.evaluate`.
"""
