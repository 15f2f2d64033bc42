"""The repo builds as a ROS 2 package with colcon and installs what ros2 run/launch need."""
import glob
import os
import shutil
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_colcon_build_installs_messages_python_node_launch_and_config(tmp_path, repo_root):
    colcon = os.path.join(os.path.dirname(sys.executable), 'colcon')
    if not os.path.exists(colcon):
        colcon = shutil.which('colcon')
    assert colcon, 'colcon is not installed (make setup installs colcon-common-extensions)'
    ws = tmp_path / 'ws'
    (ws / 'src').mkdir(parents=True)
    os.symlink(repo_root, ws / 'src' / 'anytime_infer')
    env = dict(os.environ, AMENT_PREFIX_PATH=sys.prefix, CMAKE_PREFIX_PATH=sys.prefix,
               COLCON_LOG_PATH=str(ws / 'log'))
    proc = subprocess.run([colcon, 'build', '--build-base', str(ws / 'build'),
                           '--install-base', str(ws / 'install'), '--base-paths',
                           str(ws / 'src'), '--cmake-args', '-DBUILD_TESTING=OFF'],
                          cwd=ws, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    inst = ws / 'install' / 'anytime_infer'
    site = glob.glob(str(inst / 'lib' / 'python3*' / 'site-packages' / 'anytime_infer'))
    assert site, 'no Python package installed'
    site = site[0]
    for rel in ('msg/_detection_array.py', 'msg/_scheduler_status.py', 'scheduler',
                'cli.py', 'bagtypes.py'):
        assert os.path.exists(os.path.join(site, rel)), rel
    for prog in ('anytime_infer_node', 'anytime-infer'):
        path = inst / 'lib' / 'anytime_infer' / prog
        assert path.exists() and os.access(path, os.X_OK), prog
        with open(path) as f:   # a ROS install runs its own python3 (PYTHON_SHEBANG default)
            assert f.readline().strip() == '#!/usr/bin/env python3', prog
    assert (inst / 'share' / 'anytime_infer' / 'package.xml').exists()
    assert (inst / 'share' / 'anytime_infer' / 'launch' / 'anytime_infer.launch.py').exists()
    assert (inst / 'share' / 'anytime_infer' / 'config' / 'anytime_infer.yaml').exists()
    assert (inst / 'share' / 'anytime_infer' / 'msg' / 'DetectionArray.msg').exists()
    assert (inst / 'share' / 'ament_index' / 'resource_index' / 'packages' /
            'anytime_infer').exists()
    # The installed package imports from the install space alone (messages included).
    check = subprocess.run(
        [sys.executable, '-c', 'import anytime_infer.msg as m, anytime_infer.scheduler as s; '
         'print(m.__file__); print(s.__file__)'],
        cwd=str(tmp_path), env=dict(env, PYTHONPATH=os.path.dirname(site),
                                    PYTHONNOUSERSITE='1'),
        capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr[-2000:]
    assert str(ws) in check.stdout.splitlines()[0]
    # The installed command runs from the install space's sources.
    cli = subprocess.run([sys.executable, str(inst / 'lib' / 'anytime_infer' / 'anytime-infer'),
                          '--help'], cwd=str(tmp_path), capture_output=True, text=True,
                         env=dict(env, PYTHONPATH=os.path.dirname(site), PYTHONNOUSERSITE='1'),
                         timeout=120)
    assert cli.returncode == 0 and 'usage: anytime-infer' in cli.stdout, cli.stderr[-2000:]
