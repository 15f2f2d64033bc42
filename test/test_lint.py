"""ROS 2's linters as tests: ament_flake8 (ROS settings), ament_pep257, package.xml."""
import os

import pytest

PY_PATHS = ['anytime_infer', 'test', 'launch', 'setup.py']


def _existing(repo_root):
    return [os.path.join(repo_root, p) for p in PY_PATHS
            if os.path.exists(os.path.join(repo_root, p))]


def test_flake8_with_ros2_settings(repo_root):
    from ament_flake8.main import main_with_errors

    rc, errors = main_with_errors(argv=_existing(repo_root))
    assert rc == 0, 'flake8 found %d problem(s):\n%s' % (len(errors), '\n'.join(errors))


def test_pep257_docstrings(repo_root):
    from ament_pep257.main import main

    rc = main(argv=_existing(repo_root))
    assert rc == 0, 'pep257 found docstring problems (see output)'


def test_package_xml_is_valid(repo_root):
    from catkin_pkg.package import parse_package

    pkg = parse_package(os.path.join(repo_root, 'package.xml'), warnings=(warnings := []))
    assert not warnings, warnings
    assert pkg.name == 'anytime_infer'
    assert pkg.get_build_type() == 'ament_cmake'
    groups = [g.name for g in pkg.member_of_groups]
    assert 'rosidl_interface_packages' in groups
    assert 'rosidl_default_runtime' in [d.name for d in pkg.exec_depends]


@pytest.mark.parametrize('name', ['Detection', 'DetectionArray', 'SchedulerStatus'])
def test_every_message_field_is_commented(repo_root, name):
    with open(os.path.join(repo_root, 'msg', name + '.msg'), encoding='utf-8') as f:
        lines = [ln.rstrip() for ln in f]
    for i, line in enumerate(lines):
        if not line or line.lstrip().startswith('#'):
            continue
        commented = '#' in line or (i > 0 and lines[i - 1].lstrip().startswith('#'))
        assert commented, f'{name}.msg line {i + 1} has no comment: {line!r}'
