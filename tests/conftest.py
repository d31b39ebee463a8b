"""Shared fixtures and markers.

Markers (all run by `make test`; select with -m): `distributed` (torchrun, 2 processes),
`hub` (a local Hub server), `slow` (a module that trains models end to end).
"""

import sys

import pytest
from hub_helpers import free_port

HUB_MODULES = {"test_hub_download.py", "test_hub_publish.py"}
SLOW_MODULES = {"test_controller.py", "test_attacks_cli.py", "test_callback.py", "test_train.py", "test_faults.py"}


def pytest_collection_modifyitems(items):
    for item in items:
        name = item.path.name
        if "torchrun" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.distributed)
        if name in HUB_MODULES:
            item.add_marker(pytest.mark.hub)
        if name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def torchrun() -> list[str]:
    """The start of a 2-process torchrun command line, on a free port of its own."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A small cnn checkpoint (width 8, untrained) with a real profile on digits and halves at its GPZ."""
    from hub_helpers import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")
