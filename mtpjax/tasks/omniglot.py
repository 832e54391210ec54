"""Omniglot (Lake et al. 2015): loaders, the MAML and Vinyals splits, rotations as classes.

Two sources give the same structure, {"images": uint8 [characters, 20, 28, 28] (ink = 255),
"alphabet", "character": [characters] str, "vinyals": [characters] str or None}:
  load_npz(path)       the converted file in ../shared/data (no pickle: np.load as is);
  load_images(root)    the original release as downloaded: images_background/ and
                       images_evaluation/ folders (or their .zip files) of 105x105 PNGs,
                       resized to 28x28 with Lanczos, as the converted file was.
The episodic sampler is mtpjax.tasks.classification.episodes over a split's classes.
"""

import io
import os
import re
import zipfile

import numpy as np

NPZ_NAME = "omniglot28.npz"
SETS = ("background", "evaluation")
DRAWINGS = 20


def load_npz(path: str, *, nearest: bool = False) -> dict:
  """Loads omniglot28.npz; both sets concatenated (964 background, then 659 evaluation).

  nearest=True takes the nearest-neighbour downsample (what MAML's preprocessing produced).
  """
  if not path:
    raise ValueError(f"Omniglot: load_npz needs the path of {NPZ_NAME}")
  if not os.path.exists(path):
    raise FileNotFoundError(f"Omniglot: no file at {path}. Expected {NPZ_NAME} with arrays "
                            f"background/evaluation [n, 20, 28, 28] uint8.")
  try:
    f = np.load(path)  # allow_pickle stays False: a pickled array raises below
  except (ValueError, OSError, EOFError) as e:
    raise ValueError(f"Omniglot: {path} is not a readable .npz file ({e}); expected "
                     f"{NPZ_NAME} with arrays background/evaluation [n, 20, 28, 28] uint8") from None
  if not hasattr(f, "files"):
    raise ValueError(f"Omniglot: {path} holds a single array, not an .npz archive with arrays "
                     f"background/evaluation")
  with f:
    suffix = "_nearest" if nearest else ""
    need = [f"{s}{suffix}" for s in SETS] + [f"{s}_{k}" for s in SETS
                                             for k in ("alphabet", "character")]
    missing = [k for k in need if k not in f.files]
    if missing:
      raise ValueError(f"Omniglot: {path} lacks arrays {missing}; it has {sorted(f.files)}")
    try:
      images = [f[f"{s}{suffix}"] for s in SETS]
    except ValueError as e:  # an object array: np.load refuses to unpickle it
      raise ValueError(f"Omniglot: {path} holds pickled (object) arrays, which are never "
                       f"loaded: {e}") from None
    for s, im in zip(SETS, images):
      if im.ndim != 4 or im.shape[1:] != (DRAWINGS, 28, 28) or im.dtype != np.uint8:
        raise ValueError(f"Omniglot: {path}:{s}{suffix} has shape {im.shape} {im.dtype}; "
                         f"expected [n, {DRAWINGS}, 28, 28] uint8")
    vinyals = ([f[f"{s}_vinyals"] for s in SETS] if all(f"{s}_vinyals" in f.files for s in SETS)
               else None)
    return {"images": np.concatenate(images),
            "alphabet": np.concatenate([f[f"{s}_alphabet"] for s in SETS]),
            "character": np.concatenate([f[f"{s}_character"] for s in SETS]),
            "vinyals": None if vinyals is None else np.concatenate(vinyals),
            "num_background": images[0].shape[0]}


def _png_to_28(data: bytes) -> np.ndarray:
  from PIL import Image
  img = Image.open(io.BytesIO(data)).convert("L").resize((28, 28), Image.LANCZOS)
  return 255 - np.asarray(img, np.uint8)  # the release draws black ink on white: invert


def _read_set(root: str, name: str):
  """{(alphabet, character): [png bytes sorted by file name]} from a folder or a .zip."""
  folder, archive = os.path.join(root, f"images_{name}"), os.path.join(root, f"images_{name}.zip")
  files = {}
  pattern = re.compile(rf"(?:^|/)images_{name}/([^/]+)/([^/]+)/([^/]+\.png)$")
  if os.path.isdir(folder):
    for dirpath, _, names in os.walk(folder):
      for n in names:
        rel = os.path.relpath(os.path.join(dirpath, n), root).replace(os.sep, "/")
        m = pattern.search(rel)
        if m:
          with open(os.path.join(dirpath, n), "rb") as fh:
            files.setdefault(m.group(1, 2), []).append((m.group(3), fh.read()))
  elif os.path.exists(archive):
    with zipfile.ZipFile(archive) as z:
      for info in z.infolist():
        m = pattern.search(info.filename)
        if m:
          files.setdefault(m.group(1, 2), []).append((m.group(3), z.read(info)))
  else:
    raise FileNotFoundError(f"Omniglot: neither {folder}/ nor {archive} exists. Expected the "
                            "original release: images_background/ and images_evaluation/ "
                            "(folders or .zip files) of alphabet/character/*.png")
  if not files:
    raise ValueError(f"Omniglot: no alphabet/character/*.png images under images_{name} in {root}")
  return {k: [b for _, b in sorted(v)] for k, v in sorted(files.items())}


def load_images(root: str) -> dict:
  """Loads the original release (105x105 PNGs, folders or zips) resized to 28x28."""
  images, alphabets, characters, n_background = [], [], [], 0
  for name in SETS:
    chars = _read_set(root, name)
    for (alphabet, character), pngs in chars.items():
      if len(pngs) != DRAWINGS:
        raise ValueError(f"Omniglot: {root}/images_{name}/{alphabet}/{character} has "
                         f"{len(pngs)} drawings; expected {DRAWINGS}")
      images.append(np.stack([_png_to_28(b) for b in pngs]))
      alphabets.append(alphabet)
      characters.append(character)
    if name == "background":
      n_background = len(images)
  return {"images": np.stack(images), "alphabet": np.array(alphabets),
          "character": np.array(characters), "vinyals": None, "num_background": n_background}


def rotations(images: np.ndarray) -> np.ndarray:
  """[c, 20, 28, 28] -> [4c, 20, 28, 28]: each character at 0/90/180/270 degrees, as classes
  ordered (character 0 at 0, 90, 180, 270 degrees, then character 1, ...)."""
  rot = np.stack([np.rot90(images, k, axes=(-2, -1)) for k in range(4)], axis=1)
  return rot.reshape((-1,) + images.shape[1:])


def maml_split(data: dict, *, seed: int = 1, num_train: int = 1200) -> dict:
  """The MAML split: characters shuffled by `seed`, 1200 for meta-training and the remaining
  423 for testing, each rotated into 4 classes. Returns {"train", "test"} arrays
  [classes, 20, 28, 28] and the character indices behind them."""
  n = data["images"].shape[0]
  if not 0 < num_train < n:
    raise ValueError(f"maml_split: num_train must be in (0, {n}), got {num_train}")
  order = np.random.default_rng(seed).permutation(n)
  train, test = np.sort(order[:num_train]), np.sort(order[num_train:])
  return {"train": rotations(data["images"][train]), "test": rotations(data["images"][test]),
          "train_chars": train, "test_chars": test}


def vinyals_split(data: dict, *, rotate: bool = True) -> dict:
  """The Vinyals et al. (2016) split (1028 / 172 / 423 characters), as ProtoNets used it."""
  if data.get("vinyals") is None:
    raise ValueError("vinyals_split: these data carry no Vinyals labels (load_npz has them)")
  out = {}
  for part in ("train", "val", "test"):
    idx = np.flatnonzero(data["vinyals"] == part)
    out[part] = rotations(data["images"][idx]) if rotate else data["images"][idx]
    out[f"{part}_chars"] = idx
  return out
