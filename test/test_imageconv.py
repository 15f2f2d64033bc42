"""Image conversion without cv_bridge: every supported encoding, and every kind of bad input."""
from array import array

import struct
import zlib

from anytime_infer.node.imageconv import BadInput, compressed_size, compressed_to_array, \
    image_to_array, jpeg_size, png_size, to_model_input
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
    with pytest.raises(BadInput, match='jpeg segment length 0'):
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


def compressed(data: bytes, fmt: str = 'jpeg') -> CompressedImage:
    m = CompressedImage(format=fmt)
    m.data = array('B', data)
    return m


def encoded(ext: str, img=RGB, params=()) -> bytes:
    ok, buf = cv2.imencode(ext, img, list(params))
    assert ok
    return buf.tobytes()


def png_header(width: int, height: int, bit_depth: int = 8, colour: int = 2) -> bytes:
    """Return a PNG signature and a valid IHDR chunk declaring a size, and nothing else."""
    body = b'IHDR' + struct.pack('>IIBBBBB', width, height, bit_depth, colour, 0, 0, 0)
    return b'\x89PNG\r\n\x1a\n' + struct.pack('>I', 13) + body + \
        struct.pack('>I', zlib.crc32(body))


def with_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    """Rewrite the size in a JPEG's SOF0 segment (the rest of the stream is unchanged)."""
    at = jpeg.index(b'\xff\xc0') + 5
    return jpeg[:at] + struct.pack('>HH', height, width) + jpeg[at + 4:]


@pytest.mark.parametrize('ext,params', [
    ('.png', ()), ('.jpg', ()), ('.jpg', (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
    ('.jpg', (cv2.IMWRITE_JPEG_OPTIMIZE, 1))])
def test_declared_size_is_read_from_the_header(ext, params):
    data = encoded(ext, RGB, params)
    assert compressed_size(data) == (5, 6)
    assert compressed_size(array('B', data)) == (5, 6)
    assert compressed_size(np.frombuffer(data, np.uint8)) == (5, 6)
    assert (png_size if ext == '.png' else jpeg_size)(data) == (5, 6)
    assert (jpeg_size if ext == '.png' else png_size)(data) is None


def test_jpeg_thumbnail_inside_app1_is_skipped():
    jpeg = encoded('.jpg')
    # An APP1 segment whose payload holds a frame header of another size (as an EXIF
    # thumbnail does): the size must come from the image's own SOF, after it.
    fake_sof = b'\xff\xc0\x00\x11\x08' + struct.pack('>HH', 999, 999) + bytes(10)
    app1 = b'\xff\xe1' + struct.pack('>H', 2 + 6 + len(fake_sof)) + b'Exif\x00\x00' + fake_sof
    assert jpeg_size(jpeg[:2] + app1 + jpeg[2:]) == (5, 6)
    arr, enc = compressed_to_array(compressed(jpeg[:2] + app1 + jpeg[2:]), 1 << 20)
    assert arr.shape == (6, 5, 3)


def test_huge_declared_size_is_refused_before_decoding():
    # 100 megapixels declared in a few dozen bytes: refused from the header (the decoder
    # alone would report corrupt data, after allocating for the declared size).
    for data, fmt in ((png_header(10000, 10000), 'png'),
                      (png_header(10000, 10000) + bytes(1000), 'png'),
                      (with_jpeg_size(encoded('.jpg'), 10000, 10000), 'jpeg'),
                      (with_jpeg_size(encoded('.jpg'), 65535, 65535)[:200], 'jpeg')):
        with pytest.raises(BadInput, match='declared in the .* header.* exceeds the limit'):
            compressed_to_array(compressed(data, fmt), 16777216)
    # The limit is the configured one, not the decoder's.
    with pytest.raises(BadInput, match='6x5.*exceeds the limit of 20 pixels'):
        compressed_to_array(compressed(encoded('.png', RGB.transpose(1, 0, 2).copy()),
                                       'png'), 20)


def test_malformed_headers_are_refused_with_a_reason():
    jpeg = encoded('.jpg')
    sos = jpeg.index(b'\xff\xda')
    sof = jpeg.index(b'\xff\xc0')
    cases = {
        'png without an IHDR': (png_header(5, 6)[:20], 'png'),
        'empty image': (png_header(0, 6), 'png'),
        'jpeg without a frame header': (b'\xff\xd8\xff', 'jpeg'),
        'jpeg without a declared height': (with_jpeg_size(jpeg, 5, 0), 'jpeg'),
        'segment length 1 < 2': (jpeg[:2] + b'\xff\xe0\x00\x01' + jpeg[2:], 'jpeg'),
        'neither png nor jpeg': (encoded('.bmp'), 'jpeg'),
    }
    cases['jpeg without a frame header (scan first)'] = (
        jpeg[:sof] + jpeg[sos:], 'jpeg')
    cases['jpeg without a frame header (lost marker)'] = (
        jpeg[:2] + b'garbage' + jpeg[2:], 'jpeg')
    for why, (data, fmt) in cases.items():
        with pytest.raises(BadInput, match=why.split(' (')[0]):
            compressed_to_array(compressed(data, fmt), 1 << 20)


def test_sixteen_bit_colour_png_becomes_eight_bit_bgr():
    img16 = RGB[..., ::-1].astype(np.uint16) * 257
    arr, enc = compressed_to_array(compressed(encoded('.png', img16), 'png'), 1 << 20)
    assert enc == 'bgr8' and arr.dtype == np.uint8
    assert np.array_equal(to_model_input(arr, enc, 6, 5, 3), RGB)


def test_mangled_compressed_images_end_as_bad_input_or_an_image():
    # Truncations and byte flips of real files: every one either decodes within the limit
    # or raises BadInput; nothing else escapes.
    rng = np.random.default_rng(1)
    big = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    for ext, fmt in (('.jpg', 'jpeg'), ('.png', 'png')):
        data = np.frombuffer(encoded(ext, big), np.uint8)
        for k in range(150):
            mangled = data.copy()
            if k % 3 == 0:
                mangled = mangled[:rng.integers(1, len(data))]
            else:
                at = rng.integers(0, len(data), size=1 + k % 5)
                mangled[at] = rng.integers(0, 255, size=len(at))
            try:
                arr, _ = compressed_to_array(compressed(mangled.tobytes(), fmt), 60 * 40)
            except BadInput:
                continue
            assert arr.shape[0] * arr.shape[1] <= 60 * 40
