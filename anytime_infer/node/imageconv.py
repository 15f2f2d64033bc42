"""
sensor_msgs Image / CompressedImage -> numpy arrays (cv_bridge's job, done here).

Every problem is a ``BadInput`` with a short reason for the drop count and the log:
unsupported encoding, step or size that does not match the data, empty or truncated data,
an image that does not decode, an image larger than the configured limit.
"""
from typing import Tuple

import cv2
import numpy as np

SUPPORTED_ENCODINGS = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16')
CHANNELS = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1, 'mono16': 1}


class BadInput(ValueError):
    """A message that cannot be turned into an image."""


def image_to_array(msg, max_pixels: int) -> Tuple[np.ndarray, str]:
    """
    Convert a sensor_msgs/Image to an (H, W, C) array; return (array, encoding).

    mono16 stays uint16; everything else is uint8. The array is a view of the message data
    where possible (no copy on the per-frame path).
    """
    enc = msg.encoding.lower()
    if enc not in CHANNELS:
        raise BadInput(f'unsupported encoding {msg.encoding!r} (supported: '
                       f'{", ".join(SUPPORTED_ENCODINGS)})')
    h, w = int(msg.height), int(msg.width)
    if h <= 0 or w <= 0:
        raise BadInput(f'empty image ({w}x{h})')
    if h * w > max_pixels:
        raise BadInput(f'image {w}x{h} exceeds the limit of {max_pixels} pixels')
    ch = CHANNELS[enc]
    itemsize = 2 if enc == 'mono16' else 1
    row = w * ch * itemsize
    step = int(msg.step)
    if step < row:
        raise BadInput(f'step {step} is smaller than width x channels ({row} bytes)')
    data = msg.data
    size = len(data)
    if size == 0:
        raise BadInput('empty data')
    if size < step * (h - 1) + row:
        raise BadInput(f'truncated data: {size} bytes for {h} rows of step {step}')
    if size != step * h:
        raise BadInput(f'data size {size} does not match step x height ({step * h})')
    buf = np.frombuffer(memoryview(data), dtype=np.uint8)
    rows = buf.reshape(h, step)[:, :row]
    if itemsize == 2:
        big = bool(msg.is_bigendian)
        arr = rows.copy().view('>u2' if big else '<u2').astype(np.uint16).reshape(h, w, 1)
    else:
        arr = rows.reshape(h, w, ch)
    return arr, enc


def compressed_to_array(msg, max_pixels: int) -> Tuple[np.ndarray, str]:
    """Decode a sensor_msgs/CompressedImage (jpeg, png) to (H, W, 3) bgr8 or mono."""
    fmt = msg.format.lower()
    if not any(k in fmt for k in ('jpeg', 'jpg', 'png')):
        raise BadInput(f'unsupported compressed format {msg.format!r} (jpeg or png)')
    data = msg.data
    if len(data) == 0:
        raise BadInput('empty compressed data')
    buf = np.frombuffer(memoryview(data), dtype=np.uint8)
    # OpenCV bounds what it decodes (CV_IO_MAX_IMAGE_PIXELS, 2^30 by default); the
    # configured limit is enforced on the decoded size.
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise BadInput(f'corrupt or truncated {msg.format} data ({len(data)} bytes)')
    if img.shape[0] * img.shape[1] > max_pixels:
        raise BadInput(f'image {img.shape[1]}x{img.shape[0]} exceeds the limit of '
                       f'{max_pixels} pixels')
    if img.ndim == 2:
        return img[..., None], 'mono16' if img.dtype == np.uint16 else 'mono8'
    if img.shape[2] == 4:
        return img, 'bgra8'
    return img, 'bgr8'


def to_model_input(arr: np.ndarray, enc: str, height: int, width: int,
                   channels: int) -> np.ndarray:
    """Resize and convert an image to the model's (H, W, C) uint8 input."""
    if enc == 'mono16':
        arr = (arr.astype(np.float32) / 257.0).clip(0, 255).astype(np.uint8)
        enc = 'mono8'
    if channels == 1:
        code = {'rgb8': cv2.COLOR_RGB2GRAY, 'bgr8': cv2.COLOR_BGR2GRAY,
                'rgba8': cv2.COLOR_RGBA2GRAY, 'bgra8': cv2.COLOR_BGRA2GRAY}.get(enc)
        img = cv2.cvtColor(arr, code) if code is not None else arr[..., 0]
    else:
        code = {'bgr8': cv2.COLOR_BGR2RGB, 'rgba8': cv2.COLOR_RGBA2RGB,
                'bgra8': cv2.COLOR_BGRA2RGB, 'mono8': cv2.COLOR_GRAY2RGB}.get(enc)
        img = cv2.cvtColor(arr, code) if code is not None else arr
    img = cv2.resize(np.ascontiguousarray(img), (width, height), interpolation=cv2.INTER_AREA)
    if img.ndim == 2:
        img = img[..., None]
    return img
