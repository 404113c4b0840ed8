import faulthandler
import os

import pytest
import torch

# Seconds one test may run before the process prints every thread's traceback and exits
# (GRU_NATIVE_TEST_TIMEOUT; 0: no limit), so that a hang (a deadlocked barrier, a lost wakeup)
# fails the run at once with the place it hangs instead of stalling CI. The tests marked slow
# get ten times as long. A C-level watchdog thread (faulthandler), so that it fires even while
# the hung code holds the GIL or runs on an emulated CUDA thread's fiber.
DEFAULT_TEST_TIMEOUT = 600
_stderr = None  # the terminal's stderr (pytest_configure)

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


def _test_timeout(item):
    value = os.environ.get("GRU_NATIVE_TEST_TIMEOUT", "")
    limit = float(value) if value else DEFAULT_TEST_TIMEOUT
    return limit * (10 if "slow" in item.keywords else 1)


def pytest_configure(config):
    if settings is not None:
        settings.load_profile("slow" if config.getoption("--slow") else "ci")
    # The terminal's stderr, for the timeout's traceback: while a test runs, pytest captures fd 2
    # into a file that a hard exit would lose (here, at configure time, it is not captured).
    global _stderr
    _stderr = os.fdopen(os.dup(2), "w")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    limit = _test_timeout(item)
    if limit > 0:
        faulthandler.dump_traceback_later(limit, exit=True, file=_stderr)
    try:
        yield
    finally:
        if limit > 0:
            faulthandler.cancel_dump_traceback_later()


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
