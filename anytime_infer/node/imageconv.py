"""
sensor_msgs Image / CompressedImage -> numpy arrays (cv_bridge's job, done here).

Every problem is a ``BadInput`` with a short reason for the drop count and the log:
unsupported encoding, step or size that does not match the data, empty or truncated data,
an image that does not decode, an image larger than the configured limit. A compressed
image's size is read from its PNG IHDR / JPEG SOFn header and checked against the limit
before anything is decoded: a few bytes that declare 100 megapixels never make the decoder
allocate them.
"""
import struct
from typing import Optional, Tuple

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


PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# Start-of-frame markers: SOF0-SOF15 but DHT (C4), JPG (C8) and DAC (CC).
JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone (no length field): TEM, RST0-RST7, SOI, EOI.
JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8), 0xD8, 0xD9])
JPEG_MAX_SEGMENTS = 256


def _bytes_view(data) -> memoryview:
    """Return a flat unsigned-byte view of bytes, array('B') or a uint8 array (no copy)."""
    mv = memoryview(data)
    return mv if mv.format == 'B' and mv.ndim == 1 else mv.cast('B')


def png_size(data) -> Optional[Tuple[int, int]]:
    """
    Return (width, height) declared by a PNG's IHDR chunk; None if ``data`` is no PNG.

    A PNG whose first chunk is not a complete IHDR raises ``BadInput``.
    """
    mv = _bytes_view(data)
    if bytes(mv[:8]) != PNG_SIGNATURE:
        return None
    if len(mv) < 24 or bytes(mv[12:16]) != b'IHDR':
        raise BadInput(f'png without an IHDR header ({len(mv)} bytes)')
    width, height = struct.unpack('>II', mv[16:24])
    return width, height


def jpeg_size(data) -> Optional[Tuple[int, int]]:
    """
    Return (width, height) declared by a JPEG's first SOFn segment; None if no JPEG.

    Walks the marker segments from SOI (at most ``JPEG_MAX_SEGMENTS``); a stream that
    ends, loses its markers or reaches its scan before a start-of-frame raises
    ``BadInput``. An embedded thumbnail (inside APPn) is skipped with its segment.
    """
    data = _bytes_view(data)
    if bytes(data[:2]) != b'\xff\xd8':
        return None
    i, n = 2, len(data)
    # Bounded walk: real files reach their frame header within a few dozen segments.
    for _ in range(JPEG_MAX_SEGMENTS):
        if i >= n or data[i] != 0xFF:
            break
        fill = i
        while i < n and data[i] == 0xFF and i - fill < 64:   # fill bytes before a marker
            i += 1
        if i + 1 > n or data[i] == 0xFF:
            break
        marker = data[i]
        i += 1
        if marker in JPEG_STANDALONE:
            if marker == 0xD9:
                break
            continue
        if i + 2 > n:
            break
        length = (data[i] << 8) | data[i + 1]
        if length < 2:
            raise BadInput(f'jpeg segment length {length} < 2')
        if marker in JPEG_SOF:
            if i + 7 > n:
                break
            height, width = struct.unpack('>HH', data[i + 3:i + 7])
            if height == 0:   # height given later by a DNL marker: size not bounded here
                raise BadInput('jpeg without a declared height (DNL)')
            return width, height
        if marker == 0xDA:   # start of scan before any frame header
            break
        i += length
    raise BadInput(f'jpeg without a frame header ({n} bytes)')


def compressed_size(data) -> Tuple[int, int]:
    """Return (width, height) a PNG or JPEG declares; ``BadInput`` for anything else."""
    for parse in (png_size, jpeg_size):
        size = parse(data)
        if size is not None:
            return size
    raise BadInput('data is neither png nor jpeg (starts '
                   f'{bytes(_bytes_view(data)[:4]).hex()})')


def compressed_to_array(msg, max_pixels: int) -> Tuple[np.ndarray, str]:
    """
    Decode a sensor_msgs/CompressedImage (jpeg, png) to (H, W, 3) bgr8 or mono.

    The size the header declares is checked against ``max_pixels`` before decoding, so
    the decoder never allocates more than the limit allows.
    """
    fmt = msg.format.lower()
    if not any(k in fmt for k in ('jpeg', 'jpg', 'png')):
        raise BadInput(f'unsupported compressed format {msg.format!r} (jpeg or png)')
    data = msg.data
    if len(data) == 0:
        raise BadInput('empty compressed data')
    # Only the header is read here (a JPEG's segment headers up to its frame header).
    w, h = compressed_size(data)
    if w <= 0 or h <= 0:
        raise BadInput(f'empty image ({w}x{h}) in the {msg.format} header')
    if w * h > max_pixels:
        raise BadInput(f'image {w}x{h} (declared in the {msg.format} header) exceeds the '
                       f'limit of {max_pixels} pixels')
    buf = np.frombuffer(memoryview(data), dtype=np.uint8)
    # OpenCV logs every corrupt image to stderr; thousands of bad frames would flood the
    # node's log, which already reports bad input (throttled) with the reason below.
    level = cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if img is None:
        raise BadInput(f'corrupt or truncated {msg.format} data ({len(data)} bytes)')
    if img.shape[0] * img.shape[1] > max_pixels:   # the decoder disagreed with the header
        raise BadInput(f'image {img.shape[1]}x{img.shape[0]} exceeds the limit of '
                       f'{max_pixels} pixels')
    if img.dtype == np.uint16 and img.ndim == 3:   # 16-bit colour png: keep 8 bits
        img = (img >> 8).astype(np.uint8)
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
