"""srclib: the tested library behind the sink-aware pruning study.

Notebooks narrate, srclib computes. See README.md for the pipeline.
"""

__version__ = "0.1.0"
