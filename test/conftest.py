"""Shared test set-up: an isolated ROS 2 domain on this host, and helpers."""
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One DDS domain per test session, so that parallel runs on one machine do not meet.
os.environ.setdefault('ROS_DOMAIN_ID', str(100 + os.getpid() % 100))
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('FASTDDS_BUILTIN_TRANSPORTS', 'LARGE_DATA')
os.environ.setdefault('HOME', '/root')
os.environ.setdefault('AMENT_PREFIX_PATH', sys.prefix)


@pytest.fixture
def repo_root() -> str:
    """Absolute path of the repository root."""
    return REPO
