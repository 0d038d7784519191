"""``PRUNERS = {name: LayerPruner}``: magnitude, wanda, sparsegpt (keys: srclib.choices.METHODS).

Adding a method: a LayerPruner subclass in its own module, one line here, its name in
srclib.choices.METHODS (and ACTIVATION_FREE when its scores use no activations).
"""

from __future__ import annotations

from srclib import choices
from srclib.pruning.base import LayerPruner
from srclib.pruning.magnitude import MagnitudePruner
from srclib.pruning.sparsegpt import SparseGPTPruner
from srclib.pruning.wanda import WandaPruner

__all__ = ["PRUNERS"]

PRUNERS: dict[str, type[LayerPruner]] = {
    "magnitude": MagnitudePruner,
    "wanda": WandaPruner,
    "sparsegpt": SparseGPTPruner,
}

choices.check("pruning methods", PRUNERS, choices.METHODS)
_free = sorted(name for name, cls in PRUNERS.items() if not cls.needs_inputs)
if _free != sorted(choices.ACTIVATION_FREE):
    raise RuntimeError(f"pruners without activations are {_free}; srclib.choices.ACTIVATION_FREE says "
                       f"{sorted(choices.ACTIVATION_FREE)}")
