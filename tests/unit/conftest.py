"""Fixtures of the unit tests that follow the runtime through the recording kernel."""

import os

import pytest

from recording_kernel import RecordingKernel
from ctrun.runtime import rootfs


@pytest.fixture
def kernel():
    with RecordingKernel() as k:
        yield k


@pytest.fixture
def rootfs_state():
    """rootfs keeps fds between its steps in module lists: none may outlive a test."""
    yield
    for fd in rootfs._NULL + rootfs._ROOT_TREE:
        os.close(fd)
    del rootfs._NULL[:], rootfs._ROOT_TREE[:], rootfs._READONLY_LATER[:]
