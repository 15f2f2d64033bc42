"""
Making recorded drives: rosbag2 bags of labelled camera frames, with ground truth.

``make_bag`` writes camera topics (raw ``Image`` rgb8 or ``CompressedImage`` png) from a
bundled model's test samples or an ImageFolder's test split, and ``<camera>/ground_truth``
(a ``DetectionArray`` with the true label, sharing each frame's header stamp), with
rosbags, as mcap or sqlite3.
"""
import os
from typing import Dict, Optional

from anytime_infer.replay.bags import DETECTIONS
import numpy as np


def make_bag(out: str, model: Optional[str] = 'fashion_mnist', images: Optional[str] = None,
             storage: str = 'mcap', compressed: bool = False, cameras: int = 2,
             rate: float = 10.0, frames: int = 100, size: int = 112, seed: int = 0) -> Dict:
    """Write a bag of camera frames from a labelled test split, with ground truth."""
    import cv2
    from anytime_infer.bagtypes import project_typestore
    from anytime_infer.camera_player import frame_message
    from anytime_infer.msg import Detection, DetectionArray
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer
    from sensor_msgs.msg import CompressedImage

    if os.path.exists(out):
        raise FileExistsError(f'{out} exists; choose a new --out')
    imgs, labels, classes = _labelled_frames(model, images, seed)
    store = project_typestore()
    plugin = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}[storage]
    t0 = 1_700_000_000 * 10**9
    period = int(1e9 / rate)
    rng = np.random.default_rng(seed)
    with Writer(out, version=9, storage_plugin=plugin) as writer:
        conns = []
        for c in range(cameras):
            cam = f'/camera_{c}'
            img_topic = f'{cam}/image_raw' + ('/compressed' if compressed else '')
            img_type = 'sensor_msgs/msg/CompressedImage' if compressed else \
                'sensor_msgs/msg/Image'
            conns.append((writer.add_connection(img_topic, img_type, typestore=store),
                          writer.add_connection(f'{cam}/ground_truth', DETECTIONS,
                                                typestore=store)))
        order = rng.permutation(len(imgs))
        k = 0
        for i in range(frames):
            for c in range(cameras):
                j = order[k % len(order)]
                k += 1
                t = t0 + i * period + c * period // (2 * cameras)
                msg = frame_message(imgs[j], t, f'camera_{c}_optical', size)
                if compressed:
                    rgb = np.frombuffer(bytes(msg.data), np.uint8).reshape(
                        msg.height, msg.width, 3)
                    ok, png = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                    msg = CompressedImage(header=msg.header, format='png')
                    msg.data = png.tobytes()
                gt = DetectionArray(header=msg.header)
                gt.detections = [Detection(class_id=int(labels[j]),
                                           label=classes[int(labels[j])], confidence=1.0)]
                writer.write(conns[c][0], t, serialize_message(msg))
                writer.write(conns[c][1], t, serialize_message(gt))
    return {'bag': out, 'cameras': cameras, 'frames_per_camera': frames, 'rate_hz': rate,
            'storage': storage, 'compressed': compressed}


def _labelled_frames(model: Optional[str], images: Optional[str], seed: int):
    from anytime_infer.model.data import load_image_folder
    if images:
        ds = load_image_folder(images, seed=seed)
        x, y = ds.subset('test')
        return x, y, ds.classes
    from anytime_infer.camera_player import load_samples
    s = load_samples(model or 'fashion_mnist')
    return s['images'], s['labels'], [str(c) for c in s['classes']]
