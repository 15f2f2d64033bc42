"""Environment defaults that rclpy from PyPI wheels needs, set before rclpy is imported."""
import os
import sys
import tempfile


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
