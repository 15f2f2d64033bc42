"""The annotated debug image: label, confidence and depth drawn on the frame."""
from array import array

import cv2
import numpy as np
from sensor_msgs.msg import Image


def annotate(header, arr: np.ndarray, enc: str, results) -> Image:
    """Draw each result's box and text on the frame; return an rgb8 Image."""
    if enc == 'mono16':
        arr = (arr.astype(np.float32) / 257.0).astype(np.uint8)
    code = {'bgr8': cv2.COLOR_BGR2RGB, 'bgra8': cv2.COLOR_BGRA2RGB,
            'rgba8': cv2.COLOR_RGBA2RGB}.get(enc)
    if arr.shape[2] == 1:
        img = cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
    else:
        img = cv2.cvtColor(arr, code) if code is not None else arr.copy()
    scale = max(img.shape[1] / 640.0, 0.35)
    for r in results:
        x, y, w, h = r.roi
        cv2.rectangle(img, (x, y), (x + max(w, 1) - 1, y + max(h, 1) - 1), (0, 255, 0), 1)
        text = f'{r.label} {r.confidence:.2f} d{r.depth}/{r.num_stages}'
        cv2.putText(img, text, (x + 2, y + int(14 * scale) + 2), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45 * scale, (255, 255, 0), 1, cv2.LINE_AA)
    msg = Image(header=header, height=img.shape[0], width=img.shape[1], encoding='rgb8',
                is_bigendian=0, step=img.shape[1] * 3)
    msg.data = array('B', np.ascontiguousarray(img).tobytes())
    return msg
