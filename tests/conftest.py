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
