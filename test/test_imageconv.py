"""Image conversion without cv_bridge: every supported encoding, and every kind of bad input."""
from array import array

from anytime_infer.node.imageconv import BadInput, compressed_to_array, image_to_array, \
    to_model_input
import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

RGB = np.random.default_rng(0).integers(0, 255, (6, 5, 3), dtype=np.uint8)


def raw(arr, encoding, step_pad=0, bigendian=False):
    h, w = arr.shape[:2]
    rowbytes = arr[0].nbytes
    data = np.zeros((h, rowbytes + step_pad), np.uint8)
    data[:, :rowbytes] = arr.reshape(h, -1).view(np.uint8)
    m = Image(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian),
              step=rowbytes + step_pad)
    m.data = array('B', data.tobytes())
    return m


@pytest.mark.parametrize('enc,make', [
    ('rgb8', lambda: RGB),
    ('bgr8', lambda: RGB[..., ::-1].copy()),
    ('rgba8', lambda: np.dstack([RGB, np.full(RGB.shape[:2], 255, np.uint8)])),
    ('bgra8', lambda: np.dstack([RGB[..., ::-1], np.full(RGB.shape[:2], 255, np.uint8)])),
])
def test_colour_encodings_give_the_same_rgb_input(enc, make):
    arr, e = image_to_array(raw(make(), enc, step_pad=3), 1 << 20)
    out = to_model_input(arr, e, 6, 5, 3)
    assert np.array_equal(out, RGB)


def test_mono8_and_mono16_little_and_big_endian():
    grey = RGB[..., 0]
    arr, e = image_to_array(raw(grey[..., None], 'mono8'), 1 << 20)
    assert np.array_equal(to_model_input(arr, e, 6, 5, 1)[..., 0], grey)
    g16 = grey.astype(np.uint16) * 257
    for big in (False, True):
        src = g16.astype('>u2' if big else '<u2')
        arr, e = image_to_array(raw(src[..., None], 'mono16', bigendian=big), 1 << 20)
        assert np.array_equal(arr[..., 0], g16)
        assert np.array_equal(to_model_input(arr, e, 6, 5, 1)[..., 0], grey)


@pytest.mark.parametrize('fmt,ext', [('jpeg', '.jpg'), ('png', '.png')])
def test_compressed_images_decode(fmt, ext):
    ok, buf = cv2.imencode(ext, RGB[..., ::-1])
    m = CompressedImage(format=fmt)
    m.data = array('B', buf.tobytes())
    arr, e = compressed_to_array(m, 1 << 20)
    assert e == 'bgr8' and arr.shape == (6, 5, 3)
    if fmt == 'png':
        assert np.array_equal(to_model_input(arr, e, 6, 5, 3), RGB)


def test_bad_raw_images_are_refused_with_a_reason():
    good = raw(RGB, 'rgb8')
    cases = {
        'unsupported encoding': {'encoding': 'yuv422'},
        'step': {'step': 3},
        'truncated': {'data': array('B', bytes(20))},
        'empty data': {'data': array('B')},
        'does not match': {'height': 4},
        'empty image': {'width': 0},
    }
    for why, change in cases.items():
        m = raw(RGB, 'rgb8')
        for k, v in change.items():
            setattr(m, k, v)
        with pytest.raises(BadInput, match=why):
            image_to_array(m, 1 << 20)
    with pytest.raises(BadInput, match='exceeds the limit'):
        image_to_array(good, 10)


def test_bad_compressed_images_are_refused_with_a_reason():
    ok, buf = cv2.imencode('.jpg', RGB)
    corrupt = CompressedImage(format='jpeg')
    corrupt.data = array('B', b'\xff\xd8\xff' + bytes(200))
    with pytest.raises(BadInput, match='corrupt or truncated'):
        compressed_to_array(corrupt, 1 << 20)
    truncated = CompressedImage(format='png')
    ok, png = cv2.imencode('.png', RGB)
    truncated.data = array('B', png.tobytes()[:30])
    with pytest.raises(BadInput, match='corrupt or truncated'):
        compressed_to_array(truncated, 1 << 20)
    other = CompressedImage(format='tiff')
    other.data = array('B', buf.tobytes())
    with pytest.raises(BadInput, match='unsupported compressed format'):
        compressed_to_array(other, 1 << 20)
    big = CompressedImage(format='jpeg')
    big.data = array('B', buf.tobytes())
    with pytest.raises(BadInput, match='exceeds the limit'):
        compressed_to_array(big, 10)
