import pytest
import torch

try:
    from hypothesis import HealthCheck, settings

    # CI-friendly by default; --slow runs many more examples.
    settings.register_profile("ci", max_examples=40, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("slow", max_examples=600, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
except ImportError:  # hypothesis is a test dependency; the property tests skip without it
    settings = None


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run the tests marked slow")


def pytest_configure(config):
    if settings is not None:
        settings.load_profile("slow" if config.getoption("--slow") else "ci")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_tf32():
    # cuDNN's fp32 GRU and cuBLAS use TF32 by default; parity is checked in true fp32.
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old
