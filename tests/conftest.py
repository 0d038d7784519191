import logging

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_thread_session():
    # one thread, also for module-scoped fixtures that build models or reports: the suite's
    # tensors are tiny, and on a loaded 2-core machine intra-op threads cost far more than they save
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    # every test starts seeded on one thread, whatever the previous test changed
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(1)


def pytest_configure(config):
    logging.getLogger("srclib").setLevel(logging.WARNING)


@pytest.fixture
def no_lm_eval(monkeypatch, tmp_path):
    """For the lm-eval CLI wrapper's tests: lm-eval's CLI must not start (its argv is recorded in
    the returned list instead), and lm-eval's full task index must not be built; paths.ROOT points
    at an empty tree (no models/ built there). lm-eval is imported here, not at collection."""
    import sys

    import lm_eval.__main__

    from srclib import paths
    from srclib.evaluation import tasks as T

    calls = []
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", lambda: calls.append(list(sys.argv)))
    real = T._task_index

    def index(full=False):
        if full:
            raise AssertionError("lm-eval's full task index was built")
        return real(full)

    monkeypatch.setattr(T, "_task_index", index)
    monkeypatch.setattr(paths, "ROOT", tmp_path / "root")
    return calls
