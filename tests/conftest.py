import logging

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    # one thread: the suite's tensors are tiny, and on a loaded 2-core machine intra-op threads
    # cost far more than they save; restore whatever a test changed
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def pytest_configure(config):
    logging.getLogger("srclib").setLevel(logging.WARNING)
