"""Omniglot loaders and splits, on tiny data the tests write, and on the real file if present."""

import os
import shutil

import jax
import numpy as np
import pytest

import mtpjax as mj
from mtpjax.tasks import omniglot

REAL = os.path.join(omniglot.default_data_dir(), omniglot.NPZ_NAME)


def tiny_npz(path, n_bg=3, n_ev=2, **override):
  rng = np.random.default_rng(0)
  arrays = {}
  for s, n in (("background", n_bg), ("evaluation", n_ev)):
    arrays[s] = rng.integers(0, 256, size=(n, 20, 28, 28), dtype=np.uint8)
    arrays[f"{s}_nearest"] = (arrays[s] > 127).astype(np.uint8) * 255
    arrays[f"{s}_alphabet"] = np.array([f"Alpha{s[0]}"] * n)
    arrays[f"{s}_character"] = np.array([f"character{i:02d}" for i in range(n)])
    arrays[f"{s}_vinyals"] = np.array((["train", "val", "test"] * n)[:n])
  arrays.update(override)
  np.savez(path, **arrays)
  return arrays


def test_load_npz_and_its_errors(tmp_path):
  arrays = tiny_npz(tmp_path / "o.npz")
  data = omniglot.load_npz(str(tmp_path / "o.npz"))
  np.testing.assert_array_equal(data["images"], np.concatenate([arrays["background"],
                                                                arrays["evaluation"]]))
  assert data["num_background"] == 3 and list(data["vinyals"][:3]) == ["train", "val", "test"]
  near = omniglot.load_npz(str(tmp_path / "o.npz"), nearest=True)
  assert set(np.unique(near["images"])) <= {0, 255}
  with pytest.raises(FileNotFoundError, match="no file at .*missing.npz"):
    omniglot.load_npz(str(tmp_path / "missing.npz"))
  tiny_npz(tmp_path / "bad.npz", evaluation=np.zeros((2, 20, 28), np.uint8))
  with pytest.raises(ValueError, match=r"evaluation has shape \(2, 20, 28\)"):
    omniglot.load_npz(str(tmp_path / "bad.npz"))
  np.savez(tmp_path / "partial.npz", background=arrays["background"])
  with pytest.raises(ValueError, match="lacks arrays"):
    omniglot.load_npz(str(tmp_path / "partial.npz"))
  np.savez(tmp_path / "pickled.npz", background=np.array([{"a": 1}], dtype=object))
  with pytest.raises(ValueError):  # object arrays need pickle, which is never allowed
    omniglot.load_npz(str(tmp_path / "pickled.npz"))


def write_release(root, drawings=20):
  """A tiny release: 2 alphabets x 2 characters per set, 105x105 black-on-white PNGs."""
  from PIL import Image
  rng = np.random.default_rng(1)
  for s in omniglot.SETS:
    for a in range(2):
      for c in range(2):
        d = root / f"images_{s}" / f"Alphabet_{a}" / f"character{c + 1:02d}"
        d.mkdir(parents=True)
        for k in range(drawings):
          ink = rng.random((105, 105)) < 0.1
          Image.fromarray(np.where(ink, 0, 255).astype(np.uint8)).convert("1").save(
              d / f"{a}{c}_{k + 1:02d}.png")


def test_load_images_from_folders_and_zips(tmp_path):
  write_release(tmp_path)
  data = omniglot.load_images(str(tmp_path))
  assert data["images"].shape == (8, 20, 28, 28) and data["images"].dtype == np.uint8
  assert data["num_background"] == 4 and list(data["alphabet"][:2]) == ["Alphabet_0"] * 2
  # Ink becomes 255: about 10% ink, so the mean is far below the inverted 90%.
  assert 5 < data["images"].mean() < 80
  zipped = tmp_path / "zipped"
  zipped.mkdir()
  for s in omniglot.SETS:
    shutil.make_archive(str(zipped / f"images_{s}"), "zip", root_dir=tmp_path,
                        base_dir=f"images_{s}")
  np.testing.assert_array_equal(omniglot.load_images(str(zipped))["images"], data["images"])
  with pytest.raises(FileNotFoundError, match="images_background"):
    omniglot.load_images(str(tmp_path / "nowhere"))


def test_a_character_with_missing_drawings_is_an_error(tmp_path):
  write_release(tmp_path, drawings=3)
  with pytest.raises(ValueError, match="has 3 drawings; expected 20"):
    omniglot.load_images(str(tmp_path))


def test_rotations_are_new_classes():
  imgs = np.random.default_rng(0).integers(0, 256, size=(3, 20, 28, 28), dtype=np.uint8)
  rot = omniglot.rotations(imgs)
  assert rot.shape == (12, 20, 28, 28)
  for i in range(3):
    for k in range(4):
      np.testing.assert_array_equal(rot[4 * i + k], np.rot90(imgs[i], k, axes=(-2, -1)))
  flat = {rot[j].tobytes() for j in range(12)}
  assert len(flat) == 12


def test_maml_split_is_disjoint_and_fixed_by_seed(tmp_path):
  tiny_npz(tmp_path / "o.npz", n_bg=6, n_ev=4)
  data = omniglot.load_npz(str(tmp_path / "o.npz"))
  a = omniglot.maml_split(data, seed=1, num_train=7)
  b = omniglot.maml_split(data, seed=1, num_train=7)
  c = omniglot.maml_split(data, seed=2, num_train=7)
  assert not set(a["train_chars"]) & set(a["test_chars"])
  assert len(a["train_chars"]) == 7 and len(a["test_chars"]) == 3
  assert a["train"].shape == (28, 20, 28, 28) and a["test"].shape == (12, 20, 28, 28)
  np.testing.assert_array_equal(a["train"], b["train"])
  assert not np.array_equal(a["train_chars"], c["train_chars"])
  v = omniglot.vinyals_split(data)
  assert sum(len(v[f"{p}_chars"]) for p in ("train", "val", "test")) == 10


@pytest.mark.skipif(not os.path.exists(REAL), reason=f"real Omniglot not at {REAL}")
def test_real_omniglot_splits_and_episodes():
  data = omniglot.load_npz(REAL)
  assert data["images"].shape == (1623, 20, 28, 28)
  split = omniglot.maml_split(data)
  assert split["train"].shape[0] == 4800 and split["test"].shape[0] == 4 * 423
  v = omniglot.vinyals_split(data, rotate=False)
  assert [len(v[f"{p}_chars"]) for p in ("train", "val", "test")] == [1028, 172, 423]
  fam = mj.tasks.classification.episodes(split["test"], ways=20, shots=5, queries=15)
  ep = jax.jit(fam.sample)(jax.random.key(0))
  assert ep.support.x.shape == (100, 28, 28) and ep.query.x.shape == (300, 28, 28)
