"""The plot stage's data side, one module per concern (this package imports nothing itself).

* ``results``: evaluate metrics files read into frames; per-configuration summaries and noise;
* ``tables``: the paper-style tables (main, dense, sink variance) as display frames;
* ``render``: tables written as markdown, HTML and LaTeX;
* ``series``: DVC plot series and the frames the sparsity figures draw;
* ``loaders``: the other stages' outputs (variance, trajectories, prune, train, efficiency);
* ``findings``: the paper's claims with the measured answers;
* ``index``: reports/index.html, the study's front page;
* ``readme``: the README's results block (``python -m srclib.report.readme``).

The stage itself is srclib.stages.plot.
"""
