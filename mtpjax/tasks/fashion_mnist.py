"""Fashion-MNIST (Xiao et al. 2017) from its four IDX files, and IDX files in general.

The files are those of the original release, as Debian's `dataset-fashion-mnist` package
installs them under /usr/share/datasets/fashion-mnist/ (`train-images-idx3-ubyte.gz`,
`train-labels-idx1-ubyte.gz`, `t10k-...`), gzipped or not. 10 classes of 28x28 grey images:
60,000 for training and 10,000 for test, balanced. The library reads the directory it is
given; the experiments name the default one.
"""

import gzip
import os

import numpy as np

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot")
SPLITS = {"train": "train", "test": "t10k"}

# The IDX element types: the third byte of the magic number -> big-endian numpy dtype.
_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
           0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str) -> np.ndarray:
  """The array in an IDX file (gzipped when the name ends in .gz), in native byte order.

  The header is two zero bytes, the element type, the number of dimensions, then each
  dimension as a big-endian uint32; the elements follow. Errors name the file and what is
  wrong (not IDX, an unknown type, a size that does not match the header).

  >>> import tempfile, os
  >>> path = os.path.join(tempfile.mkdtemp(), "a-idx1-ubyte")
  >>> _ = open(path, "wb").write(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
  >>> read_idx(path)
  array([7, 8, 9], dtype=uint8)
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"read_idx: no file at {path}")
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    raw = f.read()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
    raise ValueError(f"read_idx: {path} is not an IDX file (its first two bytes are not zero)")
  dtype = _DTYPES.get(raw[2])
  if dtype is None:
    raise ValueError(f"read_idx: {path} has an unknown element type 0x{raw[2]:02x}")
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f"read_idx: {path} ends inside its header")
  shape = tuple(int(d) for d in np.frombuffer(raw[4:header], ">u4"))
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(raw) - header != expected:
    raise ValueError(f"read_idx: {path} holds {len(raw) - header} bytes of data, but its "
                     f"header {shape} of {dtype} needs {expected} (a truncated download?)")
  return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _file(root: str, stem: str) -> str:
  for name in (stem + ".gz", stem):
    if os.path.isfile(os.path.join(root, name)):
      return os.path.join(root, name)
  raise FileNotFoundError(
      f"fashion_mnist: no {stem}(.gz) in {root}; on Debian or Ubuntu `apt-get install "
      f"dataset-fashion-mnist` puts the files in /usr/share/datasets/fashion-mnist/")


def load(root: str, split: str = "test") -> dict:
  """{"images": [n, 28, 28] uint8, "labels": [n] int32} of one split ("train" or "test")."""
  if split not in SPLITS:
    raise ValueError(f"fashion_mnist: split must be one of {tuple(SPLITS)}, got {split!r}")
  images = read_idx(_file(root, f"{SPLITS[split]}-images-idx3-ubyte"))
  labels = read_idx(_file(root, f"{SPLITS[split]}-labels-idx1-ubyte")).astype(np.int32)
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise ValueError(f"fashion_mnist: {root} {split}: images {images.shape} and labels "
                     f"{labels.shape} do not pair up ([n, h, w] and [n])")
  if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
    raise ValueError(f"fashion_mnist: {root} {split}: labels outside [0, {len(CLASSES)})")
  return {"images": images, "labels": labels}


def by_class(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """[classes, per_class, ...]: the examples of each label in file order, for
  mj.tasks.classification.episodes. Every label 0..max must have the same count (both
  Fashion-MNIST splits are balanced); anything else is an error naming the counts.

  >>> by_class(np.arange(4), np.array([1, 0, 0, 1])).tolist()
  [[1, 2], [0, 3]]
  """
  labels = np.asarray(labels)
  counts = np.bincount(labels)
  if counts.size == 0 or (counts != counts[0]).any():
    raise ValueError(f"by_class: every class needs the same number of examples, got counts "
                     f"{counts.tolist()}")
  order = np.argsort(labels, kind="stable")
  return np.asarray(images)[order].reshape((counts.size, counts[0]) + np.shape(images)[1:])
