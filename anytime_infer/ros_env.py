"""Environment defaults that rclpy from PyPI wheels needs, set before rclpy is imported."""
import os
import sys
import tempfile
from typing import Dict, List, Optional

# Set in the environment of a process re-executed by isolate_venv_from_sourced_ros().
ISOLATED = '_ANYTIME_INFER_VENV_ISOLATED'
# ros_wheels_bootstrapper's guard: unset, it computes LD_LIBRARY_PATH again on re-exec.
BOOTSTRAPPED = '_ROS_WHEELS_BOOTSTRAP_COMPLETE'


def _inside(path: str, roots: List[str]) -> bool:
    """Tell whether ``path`` lies in (or is) one of ``roots``."""
    real = os.path.realpath(path)
    return any(real == r or real.startswith(r + os.sep) for r in roots)


def venv_ros_environment(env: Dict[str, str], prefix: str) -> Optional[Dict[str, str]]:
    """
    Return ``env`` without a sourced ROS install's Python and library paths, or None.

    The venv holds its own ROS (Kilted wheels). When a ROS install is sourced as well
    (``AMENT_PREFIX_PATH=$PWD/.venv:$AMENT_PREFIX_PATH`` for ``ros2 launch``), its
    ``PYTHONPATH`` entries come before the venv's site-packages and its ``LD_LIBRARY_PATH``
    entries may come before the wheels' libraries: another rclpy, built for another
    Python, or other librcl/rmw libraries would be loaded. Entries under a prefix of
    ``AMENT_PREFIX_PATH`` / ``CMAKE_PREFIX_PATH`` other than the venv are dropped. None
    when there is nothing to drop.
    """
    venv = os.path.realpath(prefix)
    roots = {os.path.realpath(p) for var in ('AMENT_PREFIX_PATH', 'CMAKE_PREFIX_PATH')
             for p in env.get(var, '').split(os.pathsep) if p}
    foreign = [r for r in roots if r != venv and not _inside(r, [venv])]
    if not foreign:
        return None
    out, changed = dict(env), False
    for var in ('PYTHONPATH', 'LD_LIBRARY_PATH'):
        parts = [p for p in env.get(var, '').split(os.pathsep) if p]
        keep = [p for p in parts if not _inside(p, foreign)]
        if keep != parts:
            changed = True
            if keep:
                out[var] = os.pathsep.join(keep)
            else:
                out.pop(var, None)
    if not changed:
        return None
    out.pop(BOOTSTRAPPED, None)
    out[ISOLATED] = '1'
    return out


def isolate_venv_from_sourced_ros() -> None:
    """
    In a venv with its own rclpy, re-execute without a sourced ROS install's paths.

    Does nothing outside a virtual environment or in one without its own rclpy (a ROS
    install's python, or a venv over the system's ROS packages): there the sourced
    install is the one to use.
    """
    if sys.prefix == sys.base_prefix or os.environ.get(ISOLATED):
        return
    site = os.path.join(sys.prefix, 'lib', f'python{sys.version_info[0]}.{sys.version_info[1]}',
                        'site-packages')
    if not os.path.isdir(os.path.join(site, 'rclpy')):
        return
    env = venv_ros_environment(dict(os.environ), sys.prefix)
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, env)


def apply_ros_env_defaults() -> None:
    """
    Set what a ROS 2 process needs when the caller has not set it.

    - ``AMENT_PREFIX_PATH``: a virtual environment holding the ROS wheels is laid out as an
      install prefix; without this, ``get_package_share_directory`` and rosidl fail.
    - ``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA``: Fast DDS's default transports lose most
      large best-effort images; with LARGE_DATA (TCP + shared memory) they arrive.
    - ``ROS_LOG_DIR``: ``rclpy.init`` fails in a process with neither HOME nor ROS_LOG_DIR.
    """
    prefix = sys.prefix
    if 'AMENT_PREFIX_PATH' not in os.environ and os.path.isdir(
            os.path.join(prefix, 'share', 'ament_index')):
        os.environ['AMENT_PREFIX_PATH'] = prefix
    os.environ.setdefault('FASTDDS_BUILTIN_TRANSPORTS', 'LARGE_DATA')
    if 'HOME' not in os.environ and 'ROS_LOG_DIR' not in os.environ:
        os.environ['ROS_LOG_DIR'] = os.path.join(tempfile.gettempdir(), 'ros_log')
