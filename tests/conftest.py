"""Shared fixtures and markers.

Markers (all run by `make test`; select with -m): `distributed` (torchrun, 2 processes),
`hub` (a local Hub server), `slow` (a module that trains models end to end).
"""

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

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
def torchrun() -> Callable[..., subprocess.CompletedProcess]:
    """Run `args` (a script or `-m module` and its arguments) in 2 CPU processes under torchrun.

    `--standalone` lets the rendezvous bind a free port itself (no port picked in advance that another
    program can take meanwhile). With `check`, a failed run fails the test showing the workers' stderr."""

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if check and proc.returncode != 0:
            pytest.fail(f"torchrun exited {proc.returncode}:\n{proc.stderr[-4000:]}", pytrace=False)
        return proc

    return run


@pytest.fixture(scope="session")
def local_hub(tmp_path_factory):
    """One local Hub server (olah, offline) for the whole session, serving the git repos under
    `local_hub.mirrors`. A test commits the repos it needs with `hub_helpers.git_commit` (olah serves a
    repo committed after it started); repo ids are unique across the test modules."""
    from hub_helpers import Olah

    olah = Olah(tmp_path_factory.mktemp("local_hub"))
    olah.start()
    yield olah
    olah.stop()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A small cnn checkpoint (width 8, untrained) with a real profile on digits and halves at its GPZ."""
    from hub_helpers import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")
