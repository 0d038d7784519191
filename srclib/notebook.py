"""The setup every stage notebook shares: logging, pandas display options, validated params.

A stage notebook is a parameters cell, then ``P = notebook.setup(params_file)``, one call to its
stage's ``srclib.stages.<stage>.run(...)``, tables and figures, and an interpretation written from
the metrics (``srclib.stages`` modules return it).
"""

from __future__ import annotations

import logging
from pathlib import Path

from srclib import params

__all__ = ["setup"]


def setup(params_file: str | Path) -> params.Params:
    """Configure logging and pandas display for a notebook; return the validated params.yaml."""
    import pandas as pd

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    pd.set_option("display.precision", 4)
    pd.set_option("display.max_columns", 40)
    return params.load(params_file)
