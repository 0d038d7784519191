"""The setup every stage notebook shares: logging, pandas display options, validated params; and
the progress lines of long loops.

A stage notebook is a parameters cell, then ``P = notebook.setup(params_file)``, one call to its
stage's ``srclib.stages.<stage>.run(...)``, tables and figures, and an interpretation written from
the metrics (``srclib.stages`` modules return it).

Progress (:class:`Progress`, :func:`progress`, :func:`phase`): a long loop (training, collection,
calibration) logs lines such as ``train tiny-ar: step 600/6000 (10%), loss 4.12, lr 0.0003, 2m05s
elapsed, ETA 18m45s`` on the ``srclib.progress`` logger, at most one per ``PROGRESS_EVERY`` of the loop or
``PROGRESS_EVERY_S`` seconds, and a last one with the loop's time. Under the runner (``python -m srclib.run``) the
environment variable ``SRCLIB_PROGRESS`` names a file: the lines go to that file only, and the
runner copies them to its terminal while the notebook runs, so the executed notebook and its HTML
report hold no progress and no clock values. Elsewhere (a test, an interactive notebook) they go
wherever logging sends ``srclib.progress`` records.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from srclib import params

__all__ = ["setup", "PROGRESS_ENV", "PROGRESS_LOGGER", "PROGRESS_EVERY", "PROGRESS_EVERY_S", "Progress",
           "progress", "phase", "progress_logger", "duration"]

PROGRESS_ENV = "SRCLIB_PROGRESS"  # the runner's progress file (read by the runner, not the notebook)
PROGRESS_LOGGER = "srclib.progress"
PROGRESS_EVERY = 0.1  # a line each time another tenth of the loop is done ...
PROGRESS_EVERY_S = 30.0  # ... or this many seconds passed since the last line, whichever is first

T = TypeVar("T")
_routed: dict[str, Any] = {"target": None, "handler": None}


def setup(params_file: str | Path) -> params.Params:
    """Configure logging and pandas display for a notebook; return the validated params.yaml."""
    import pandas as pd

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    progress_logger()
    pd.set_option("display.precision", 4)
    pd.set_option("display.max_columns", 40)
    return params.load(params_file)


def progress_logger() -> logging.Logger:
    """The ``srclib.progress`` logger, routed (module docstring): when ``SRCLIB_PROGRESS`` names a
    file, its records go to that file only (not to the notebook's stderr, which is saved with the
    notebook); otherwise they propagate as any other record."""
    logger = logging.getLogger(PROGRESS_LOGGER)
    target = os.environ.get(PROGRESS_ENV) or None
    if target == _routed["target"]:
        return logger
    if _routed["handler"] is not None:
        logger.removeHandler(_routed["handler"])
        _routed["handler"].close()
        _routed["handler"] = None
    if target is None:
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    else:
        handler = logging.FileHandler(target, encoding="utf-8")  # flushed after every record
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.INFO)
        _routed["handler"] = handler
    _routed["target"] = target
    return logger


def duration(seconds: float) -> str:
    """``4.2 s``, ``3m05s``, ``1h02m``: a duration for a person to read."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _fields(fields: dict[str, Any]) -> str:
    return "".join(f", {k} {v:.4g}" if isinstance(v, float) else f", {k} {v}" for k, v in fields.items())


class Progress:
    """Progress lines of one loop of ``total`` units (module docstring).

    ``update(n, **fields)`` after each unit (fields such as ``loss=3.41`` are shown on the line);
    ``close(**fields)`` logs the last line (done, in how long) unless the loop's end was already
    shown. A context manager: leaving it closes it (on an exception: a line saying where it stopped).
    """

    def __init__(self, what: str, total: int, unit: str = "step", *, every: float = PROGRESS_EVERY,
                 every_s: float = PROGRESS_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.what, self.total, self.unit = what, max(0, int(total)), unit
        self.every, self.every_s, self.clock = every, every_s, clock
        self.log = progress_logger()
        self.done = 0
        self.t0 = self.last_t = clock()
        self.last_done = 0
        self.closed = False
        plural = unit + ("es" if unit.endswith(("s", "x", "ch", "sh")) else "s")
        self.log.info("%s: %d %s", what, self.total, unit if self.total == 1 else plural)

    def update(self, n: int = 1, **fields: Any) -> bool:
        """Count ``n`` more units done; log a line when one is due. Returns whether it logged one."""
        self.done += n
        now = self.clock()
        due = (self.done >= self.total or self.done - self.last_done >= self.every * self.total
               or now - self.last_t >= self.every_s)
        if due and self.done > self.last_done:
            self._line(now, fields)
            return True
        return False

    def _line(self, now: float, fields: dict[str, Any]) -> None:
        elapsed = now - self.t0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        if self.done >= self.total:
            tail = f"done in {duration(elapsed)}"
        else:
            tail = f"{duration(elapsed)} elapsed, ETA {duration(elapsed / self.done * (self.total - self.done))}"
        self.log.info("%s: %s %d/%d (%.0f%%)%s, %s", self.what, self.unit, self.done, self.total, pct,
                      _fields(fields), tail)
        self.last_t, self.last_done = now, self.done

    def close(self, **fields: Any) -> None:
        if self.closed:
            return
        self.closed = True
        if self.done != self.last_done or (self.done == 0 and self.total == 0):
            self._line(self.clock(), fields)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif not self.closed:  # an error, or the loop over progress() left early (GeneratorExit)
            self.closed = True
            why = "" if exc_type is GeneratorExit else f" ({exc_type.__name__})"
            self.log.info("%s: stopped at %s %d/%d after %s%s", self.what, self.unit, self.done, self.total,
                          duration(self.clock() - self.t0), why)


def progress(items: Iterable[T], what: str, total: int | None = None, unit: str = "step") -> Iterator[T]:
    """``items``, one :class:`Progress` unit each (``total`` defaults to ``len(items)``)."""
    items = list(items) if total is None and not hasattr(items, "__len__") else items
    with Progress(what, len(items) if total is None else total, unit) as bar:  # type: ignore[arg-type]
        for item in items:
            yield item
            bar.update()


@contextlib.contextmanager
def phase(what: str) -> Iterator[None]:
    """A progress line ``<what> ...`` before a step of a stage, ``<what>: done in 4.2 s`` after it
    (``<what>: failed after ...`` when it raises)."""
    log = progress_logger()
    log.info("%s ...", what)
    t0 = time.monotonic()
    try:
        yield
    except BaseException as exc:
        log.info("%s: failed after %s (%s)", what, duration(time.monotonic() - t0), type(exc).__name__)
        raise
    log.info("%s: done in %s", what, duration(time.monotonic() - t0))
