"""The ROS 2 node: camera topics in, anytime detections out."""
import sys
from typing import List, Optional


def main(args: Optional[List[str]] = None) -> int:
    """Run the anytime_infer node until Ctrl-C or shutdown."""
    from anytime_infer.ros_env import apply_ros_env_defaults
    apply_ros_env_defaults()
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from anytime_infer.node.anytime_infer_node import AnytimeInferNode

    rclpy.init(args=args)
    node = None
    try:
        node = AnytimeInferNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (RuntimeError, ValueError) as e:
        print(f'anytime_infer_node: {e}', file=sys.stderr)
        return 1
    finally:
        if node is not None:
            if node.executor_ is not None:
                node.executor_.stop()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0
