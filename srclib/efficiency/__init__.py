"""Efficiency of pruned models, one module per concern; this package imports nothing.

- ``accounting``: FLOPs and weight memory of the prunable layers (dense, CSR, 2:4).
- ``sparse``: CSR execution (``CSRLinear``, ``sparse_copy``) and a magnitude-zeroing fixture.
- ``timing``: interleaved latency measurement, the environment, ``efficiency_report``.
- ``summary``: flat table rows of reports.

The stage lives in ``srclib.stages.efficiency``.
"""
