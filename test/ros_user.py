"""Helpers for tests that run the node as a ROS user does: from the prefix, in its own session."""
import os
import signal
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

NODE = os.path.join(sys.prefix, 'lib', 'anytime_infer', 'anytime_infer_node')


def start_node(ros_args: List[str], log_path: str,
               env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
    """
    Start the prefix's node with ``--ros-args`` in a session of its own, as launch does.

    A background child of a non-interactive shell inherits SIGINT as ignored; its own
    session (and process group) receives a terminal's Ctrl-C like a launched node.
    """
    log = open(log_path, 'w')
    try:
        return subprocess.Popen([NODE, '--ros-args', *ros_args], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)
    finally:
        log.close()


def signal_node(proc: subprocess.Popen, sig: int, group: bool, twice: bool) -> None:
    """Send ``sig`` to the node's process group or PID, and again 0.3 s later if ``twice``."""
    for i in range(2 if twice else 1):
        if i:
            time.sleep(0.3)
        try:
            os.killpg(proc.pid, sig) if group else os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass


def kill_group(proc: subprocess.Popen) -> None:
    """Make sure the node is gone (a failed test must not leave it running)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


def spin_until(node, until: Callable[[], bool], seconds: float) -> bool:
    """Spin a test node until ``until()`` holds or ``seconds`` pass; return ``until()``."""
    import rclpy
    end = time.monotonic() + seconds
    while not until() and time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    return until()


def get_parameters(node, fqn: str, names: List[str]) -> list:
    """Read parameters of the node ``fqn`` through its real GetParameters service."""
    import rclpy
    from rcl_interfaces.srv import GetParameters
    from rclpy.parameter import parameter_value_to_python
    cli = node.create_client(GetParameters, f'{fqn}/get_parameters')
    try:
        assert cli.wait_for_service(timeout_sec=30), f'no {fqn}/get_parameters service'
        fut = cli.call_async(GetParameters.Request(names=names))
        rclpy.spin_until_future_complete(node, fut, timeout_sec=10)
        assert fut.result() is not None, 'GetParameters did not answer'
        return [parameter_value_to_python(v) for v in fut.result().values]
    finally:
        node.destroy_client(cli)


def read_log(path: str) -> str:
    """Text of a node's log file."""
    with open(path, errors='replace') as f:
        return f.read()
