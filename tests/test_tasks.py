"""Episode samplers: invariants, and errors that name what the data allows."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtpjax as mj

CLASSES, PER_CLASS = 12, 6


def labelled_data():
  # Each example encodes (class, index) so an episode can be traced back to its source.
  c = jnp.arange(CLASSES)[:, None, None]
  i = jnp.arange(PER_CLASS)[None, :, None]
  return jnp.concatenate([jnp.broadcast_to(c, (CLASSES, PER_CLASS, 1)),
                          jnp.broadcast_to(i, (CLASSES, PER_CLASS, 1))], axis=-1)  # [12, 6, 2]


def test_class_episodes_invariants():
  fam = mj.tasks.classification.episodes(labelled_data(), ways=5, shots=2, queries=3)
  first_labels = []
  sample = jax.jit(fam.sample)
  for seed in range(20):
    ep = sample(jax.random.key(seed))
    sx, sy, qx, qy = map(np.asarray, (*ep.support, *ep.query))
    assert sx.shape == (10, 2) and qx.shape == (15, 2)
    # N distinct classes; label -> class is one-to-one and consistent across support/query.
    s_map = {int(l): int(c) for (c, _), l in zip(sx, sy)}
    q_map = {int(l): int(c) for (c, _), l in zip(qx, qy)}
    assert s_map == q_map and len(set(s_map.values())) == 5 and sorted(s_map) == list(range(5))
    assert np.bincount(sy).tolist() == [2] * 5 and np.bincount(qy).tolist() == [3] * 5
    # Support and query drawings are disjoint.
    assert not {tuple(r) for r in sx} & {tuple(r) for r in qx}
    first_labels.append(s_map[0])
  assert len(set(first_labels)) > 3  # labels are permuted per episode


@pytest.mark.parametrize("kwargs,match", [
    (dict(ways=13, shots=1, queries=1), "ways=13 exceeds the 12 classes"),
    (dict(ways=5, shots=4, queries=3), r"shots \+ queries = 4 \+ 3 exceeds the 6 examples"),
    (dict(ways=0, shots=1, queries=1), "ways must be a positive integer"),
    (dict(ways=5, shots=1, queries=-1), "queries must be a positive integer"),
])
def test_class_episodes_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    mj.tasks.classification.episodes(labelled_data(), **kwargs)


def test_class_episodes_empty_data():
  with pytest.raises(ValueError, match="empty data set"):
    mj.tasks.classification.episodes(jnp.zeros((0, 5, 3)), ways=1, shots=1, queries=1)
  with pytest.raises(ValueError, match=r"expected an array \[classes"):
    mj.tasks.classification.episodes(jnp.zeros((5,)), ways=1, shots=1, queries=1)


def test_correlated_tasks_have_the_asked_cosine_and_mmoe_labels():
  from mtpjax.tasks import correlated
  for p in (0.0, 0.5, 0.9, 1.0):
    d = correlated.make(jax.random.key(0), correlation=p, num_examples=64, dim=10, scale=2.0)
    w = np.asarray(d.w)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 2.0, rtol=1e-5)
    np.testing.assert_allclose(w[0] @ w[1] / 4.0, p, atol=1e-5)
  # y_k = w_k.x + sum_i sin(alpha_i w_k.x + beta_i) + noise, checked on one input by hand.
  d = correlated.make(jax.random.key(1), correlation=0.5, num_examples=8, dim=4, noise=0.0)
  z = float(d.w[1] @ d.x[3])
  expect = z + sum(np.sin(a * z + b) for a, b in zip(correlated.ALPHAS, correlated.BETAS))
  np.testing.assert_allclose(d.y[1, 3], expect, rtol=1e-4, atol=1e-4)
  # Splits of one problem share the task weights.
  other = correlated.make(jax.random.key(2), correlation=0.5, num_examples=8, dim=4,
                          weights_key=jax.random.key(1))
  assert not np.allclose(other.x, d.x)
  np.testing.assert_array_equal(other.w, d.w)
  with pytest.raises(ValueError, match="correlation"):
    correlated.make(jax.random.key(0), correlation=1.5, num_examples=8)


# --- Fashion-MNIST's IDX files ----------------------------------------------------------------

FASHION = "/usr/share/datasets/fashion-mnist"


def _write_idx(path, array, code):
  import gzip
  dims = np.asarray(array.shape, ">u4").tobytes()
  body = bytes([0, 0, code, array.ndim]) + dims + np.ascontiguousarray(array).tobytes()
  with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
    f.write(body)


def test_idx_files_read_back_whatever_their_type_and_compression(tmp_path):
  from mtpjax.tasks import fashion_mnist as fm
  rng = np.random.default_rng(0)
  cases = [(rng.integers(0, 256, (3, 4, 5)).astype(np.uint8), 0x08),
           (rng.integers(-100, 100, (7,)).astype(">i2"), 0x0B),
           (rng.standard_normal((2, 3)).astype(">f4"), 0x0D),
           (rng.standard_normal((4,)).astype(">f8"), 0x0E)]
  for i, (a, code) in enumerate(cases):
    for name in (f"a{i}-idx", f"a{i}-idx.gz"):
      _write_idx(tmp_path / name, a, code)
      got = fm.read_idx(str(tmp_path / name))
      assert got.shape == a.shape and got.dtype.isnative
      np.testing.assert_array_equal(got, a.astype(a.dtype.newbyteorder("=")))
  (tmp_path / "bad").write_bytes(b"\x01\x00\x08\x01\x00\x00\x00\x01\x05")
  with pytest.raises(ValueError, match="not an IDX file"):
    fm.read_idx(str(tmp_path / "bad"))
  (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
  with pytest.raises(ValueError, match="holds 2 bytes of data, but its header"):
    fm.read_idx(str(tmp_path / "short"))
  (tmp_path / "type").write_bytes(bytes([0, 0, 0x0A, 1, 0, 0, 0, 1, 1]))
  with pytest.raises(ValueError, match="unknown element type 0x0a"):
    fm.read_idx(str(tmp_path / "type"))


def test_fashion_mnist_loads_a_directory_and_groups_its_classes_for_episodes(tmp_path):
  from mtpjax.tasks import fashion_mnist as fm
  rng = np.random.default_rng(1)
  labels = np.repeat(np.arange(10), 3)[rng.permutation(30)].astype(np.uint8)
  images = (labels[:, None, None] * 10 + rng.integers(0, 5, (30, 28, 28))).astype(np.uint8)
  _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, 0x08)
  _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, 0x08)  # unzipped works too
  data = fm.load(str(tmp_path), "test")
  np.testing.assert_array_equal(data["images"], images)
  grouped = fm.by_class(data["images"], data["labels"])
  assert grouped.shape == (10, 3, 28, 28)
  for c in range(10):  # each class's examples, in file order
    np.testing.assert_array_equal(grouped[c], images[labels == c])
  fam = mj.tasks.classification.episodes(jnp.asarray(grouped, jnp.float32), ways=5, shots=1,
                                         queries=2)
  ep = fam.sample(jax.random.key(0))
  assert ep.support.x.shape == (5, 28, 28) and ep.query.x.shape == (10, 28, 28)
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
    fm.load(str(tmp_path), "train")
  with pytest.raises(ValueError, match="split must be one of"):
    fm.load(str(tmp_path), "val")
  with pytest.raises(ValueError, match="same number of examples"):
    fm.by_class(images[:29], labels[:29])
  _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[:29], 0x08)
  with pytest.raises(ValueError, match="do not pair up"):
    fm.load(str(tmp_path), "test")


@pytest.mark.skipif(not os.path.isdir(FASHION), reason=f"no {FASHION} (apt-get install "
                    "dataset-fashion-mnist)")
def test_the_installed_fashion_mnist_is_the_balanced_release():
  from mtpjax.tasks import fashion_mnist as fm
  for split, n in (("train", 60000), ("test", 10000)):
    data = fm.load(FASHION, split)
    assert data["images"].shape == (n, 28, 28) and data["images"].dtype == np.uint8
    assert np.bincount(data["labels"]).tolist() == [n // 10] * 10
  assert fm.by_class(data["images"], data["labels"]).shape == (10, 1000, 28, 28)
