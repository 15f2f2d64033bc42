"""Bags written by another library than the project's (mcap-ros2-support), for the tests."""
import numpy as np


def foreign_mcap(path: str, frames: int = 12, chatter: bool = False) -> None:
    """
    Write a bare .mcap file with mcap-ros2-support: mono8 images, no ground truth.

    ``chatter`` adds a std_msgs/String topic beside the images (a topic replay must skip).
    """
    from mcap_ros2.writer import Writer as McapWriter

    from anytime_infer.bagtypes import project_typestore
    text, _ = project_typestore().generate_msgdef('sensor_msgs/msg/Image', ros_version=2)
    with open(path, 'wb') as f:
        w = McapWriter(f)
        img = w.register_msgdef('sensor_msgs/msg/Image', text)
        chat = w.register_msgdef('std_msgs/msg/String', 'string data\n') if chatter else None
        for i in range(frames):
            t = 1_700_000_000 * 10**9 + i * 50_000_000
            w.write_message('/front/image_raw', img, {
                'header': {'stamp': {'sec': t // 10**9, 'nanosec': t % 10**9},
                           'frame_id': 'front'},
                'height': 28, 'width': 28, 'encoding': 'mono8', 'is_bigendian': 0,
                'step': 28, 'data': bytes(np.full(784, i * 20, np.uint8))},
                log_time=t, publish_time=t)
            if chat is not None:
                w.write_message('/chatter', chat, {'data': 'x'}, log_time=t, publish_time=t)
        w.finish()
