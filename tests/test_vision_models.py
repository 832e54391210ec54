"""Vision backbones (EfficientNet, ResNet, ViT, DINOv2) and visual prompts.

Checkpoints the tests write themselves (transformers and timm names, safetensors) keep the
loaders covered without ../shared/data; a float64 numpy ViT written from the layout alone
checks the mathematics. Where the data is present, every reference array (what timm and
transformers compute) is compared.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtpjax as mj
from mtpjax import prompts

DATA = os.environ.get("MTPJAX_DATA_DIR") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")


def _save(path, cfg, tensors):
  from safetensors.numpy import save_file
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(cfg, f)
  save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
            os.path.join(path, "model.safetensors"))
  return path


def _bn(t, name, c, rng):
  t.update({name + ".weight": rng.uniform(0.6, 1.4, c), name + ".bias": 0.1 * rng.standard_normal(c),
            name + ".running_mean": 0.1 * rng.standard_normal(c),
            name + ".running_var": rng.uniform(0.6, 1.6, c)})


def vit_checkpoint(path, seed=0, classes=0):
  rng = np.random.default_rng(seed)
  d, f, layers, p = 16, 32, 2, 4
  cfg = dict(model_type="vit", hidden_size=d, num_hidden_layers=layers, num_attention_heads=2,
             intermediate_size=f, patch_size=p, image_size=16, num_channels=3,
             layer_norm_eps=1e-12, hidden_act="gelu", qkv_bias=True)
  r = lambda *s: rng.standard_normal(s) / np.sqrt(s[-1] if len(s) > 1 else 10)
  t = {"embeddings.cls_token": r(1, 1, d), "embeddings.position_embeddings": r(1, 17, d),
       "embeddings.patch_embeddings.projection.weight": r(d, 3, p, p) * 0.3,
       "embeddings.patch_embeddings.projection.bias": r(d),
       "layernorm.weight": 1 + 0.1 * r(d), "layernorm.bias": r(d)}
  for i in range(layers):
    pre = f"encoder.layer.{i}."
    for name in ("attention.attention.query", "attention.attention.key",
                 "attention.attention.value", "attention.output.dense"):
      t[pre + name + ".weight"], t[pre + name + ".bias"] = r(d, d), r(d)
    t[pre + "intermediate.dense.weight"], t[pre + "intermediate.dense.bias"] = r(f, d), r(f)
    t[pre + "output.dense.weight"], t[pre + "output.dense.bias"] = r(d, f), r(d)
    for ln in ("layernorm_before", "layernorm_after"):
      t[pre + ln + ".weight"], t[pre + ln + ".bias"] = 1 + 0.1 * r(d), r(d)
  if classes:
    t["classifier.weight"], t["classifier.bias"] = r(classes, d), r(classes)
  return _save(path, cfg, t), cfg, t


def resnet_tensors(rng, names="hf"):
  """A basic-block ResNet, widths 8 16 16 16, one block per stage, in either naming."""
  t = {}
  conv = lambda o, i, k: rng.standard_normal((o, i, k, k)) / np.sqrt(i * k * k)
  hf = names == "hf"
  stem = "embedder.embedder." if hf else ""
  t[stem + ("convolution.weight" if hf else "conv1.weight")] = conv(8, 3, 7)
  _bn(t, stem + ("normalization" if hf else "bn1"), 8, rng)
  widths = [8, 8, 16, 16, 16]
  for s in range(4):
    cin, cout = widths[s], widths[s + 1]
    pre = f"encoder.stages.{s}.layers.0." if hf else f"layer{s + 1}.0."
    for j, (i, o) in enumerate(((cin, cout), (cout, cout))):
      name = pre + (f"layer.{j}.convolution" if hf else f"conv{j + 1}")
      t[name + ".weight"] = conv(o, i, 3)
      _bn(t, pre + (f"layer.{j}.normalization" if hf else f"bn{j + 1}"), o, rng)
    if s > 0 or cin != cout:
      t[pre + ("shortcut.convolution.weight" if hf else "downsample.0.weight")] = conv(cout, cin, 1)
      _bn(t, pre + ("shortcut.normalization" if hf else "downsample.1"), cout, rng)
  fc = "classifier.1" if hf else "fc"
  t[fc + ".weight"], t[fc + ".bias"] = rng.standard_normal((5, 16)) / 4, 0.1 * rng.standard_normal(5)
  return t


def efficientnet_tensors(rng):
  """A tiny tf_efficientnet_lite-shaped net: stem 8, seven stages of one block each."""
  t = {}
  conv = lambda o, i, k: rng.standard_normal((o, i, k, k)) / np.sqrt(i * k * k)
  t["conv_stem.weight"] = conv(8, 3, 3)
  _bn(t, "bn1", 8, rng)
  cin = 8
  for s, (cout, k) in enumerate(((8, 3), (8, 3), (12, 5), (12, 3), (16, 5), (16, 5), (16, 3))):
    pre = f"blocks.{s}.0."
    if s == 0:
      t[pre + "conv_dw.weight"] = conv(cin, 1, k)
      _bn(t, pre + "bn1", cin, rng)
      t[pre + "conv_pw.weight"] = conv(cout, cin, 1)
      _bn(t, pre + "bn2", cout, rng)
    else:
      mid = 2 * cin
      t[pre + "conv_pw.weight"] = conv(mid, cin, 1)
      _bn(t, pre + "bn1", mid, rng)
      t[pre + "conv_dw.weight"] = conv(mid, 1, k)
      _bn(t, pre + "bn2", mid, rng)
      t[pre + "conv_pwl.weight"] = conv(cout, mid, 1)
      _bn(t, pre + "bn3", cout, rng)
    cin = cout
  t["conv_head.weight"] = conv(24, cin, 1)
  _bn(t, "bn2", 24, rng)
  t["classifier.weight"], t["classifier.bias"] = rng.standard_normal((5, 24)) / 5, np.zeros(5)
  return t


TIMM_CFG = lambda arch: {"architecture": arch, "num_classes": 5, "pretrained_cfg": {
    "input_size": [3, 32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
    "crop_pct": 0.875, "interpolation": "bicubic"}}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  root = tmp_path_factory.mktemp("vision")
  rng = np.random.default_rng(0)
  hf_resnet = dict(model_type="resnet", depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 16, 16],
                   embedding_size=8, layer_type="basic", hidden_act="relu",
                   downsample_in_first_stage=False, num_channels=3)
  res = resnet_tensors(np.random.default_rng(1), "hf")
  timm_res = resnet_tensors(np.random.default_rng(1), "timm")
  return {"vit": vit_checkpoint(str(root / "vit"), classes=5),
          "resnet": _save(str(root / "resnet"), hf_resnet, res),
          "timm_resnet": _save(str(root / "timm_resnet"), TIMM_CFG("resnet10"), timm_res),
          "efficientnet": _save(str(root / "eff"), TIMM_CFG("tf_efficientnet_lite0"),
                                efficientnet_tensors(rng))}


# --- An independent float64 ViT -------------------------------------------------------------

def np_vit(cfg, t, image):
  """Final-LayerNorm stream [1 + N, d] of one NHWC image, float64, from HF names alone."""
  t = {k: np.asarray(v, np.float64) for k, v in t.items()}
  p, d, heads = cfg["patch_size"], cfg["hidden_size"], cfg["num_attention_heads"]
  eps = cfg["layer_norm_eps"]
  h, w, _ = image.shape
  patches = image.reshape(h // p, p, w // p, p, 3).transpose(0, 2, 4, 1, 3).reshape(-1, 3 * p * p)
  x = patches @ t["embeddings.patch_embeddings.projection.weight"].reshape(d, -1).T
  x = x + t["embeddings.patch_embeddings.projection.bias"]
  x = np.concatenate([t["embeddings.cls_token"][0], x]) + t["embeddings.position_embeddings"][0]
  ln = lambda x, n: ((x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
                     * t[n + ".weight"] + t[n + ".bias"])
  lin = lambda x, n: x @ t[n + ".weight"].T + t[n + ".bias"]
  from math import erf
  gelu = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2))))
  for i in range(cfg["num_hidden_layers"]):
    pre = f"encoder.layer.{i}."
    a = ln(x, pre + "layernorm_before")
    q, k, v = (lin(a, pre + "attention.attention." + n).reshape(-1, heads, d // heads)
               for n in ("query", "key", "value"))
    s = np.einsum("qhc,khc->hqk", q, k) / np.sqrt(d // heads)
    wts = np.exp(s - s.max(-1, keepdims=True))
    wts /= wts.sum(-1, keepdims=True)
    x = x + lin(np.einsum("hqk,khc->qhc", wts, v).reshape(-1, d), pre + "attention.output.dense")
    x = x + lin(gelu(lin(ln(x, pre + "layernorm_after"), pre + "intermediate.dense")),
                pre + "output.dense")
  return ln(x, "layernorm")


def test_a_written_vit_computes_what_a_float64_forward_computes(written):
  path, cfg, tensors = written["vit"]
  m = mj.pretrained.load(path)
  images = np.random.default_rng(2).standard_normal((3, 16, 16, 3)).astype(np.float32)
  logits = m.logits(images)
  for i in range(3):
    ref = np_vit(cfg, tensors, images[i].astype(np.float64))
    np.testing.assert_allclose(m.features(images[i:i + 1])[0], ref[0], atol=1e-5)
    want = ref[0] @ tensors["classifier.weight"].T.astype(np.float64) + tensors["classifier.bias"]
    np.testing.assert_allclose(logits[i], want, atol=1e-5)


def test_timm_and_transformers_resnet_key_maps_compute_the_same_network(written):
  a, b = mj.pretrained.load(written["resnet"]), mj.pretrained.load(written["timm_resnet"])
  images = np.random.default_rng(3).standard_normal((2, 32, 32, 3)).astype(np.float32)
  np.testing.assert_array_equal(a.features(images), b.features(images))
  np.testing.assert_array_equal(a.logits(images), b.logits(images))
  assert a.features(images).shape == (2, 16)


def test_tf_same_padding_puts_the_smaller_half_first(written):
  from mtpjax.pretrained import _cnn as cnn
  x = jnp.asarray(np.random.default_rng(4).standard_normal((1, 7, 7, 2)), jnp.float32)
  k = jnp.asarray(np.random.default_rng(5).standard_normal((3, 3, 2, 2)), jnp.float32)
  # 7 inputs, stride 2, kernel 3: TF pads 2 in all, 1 before and 1 after; at 8 inputs: 0, 1.
  manual = jax.lax.conv_general_dilated(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), k,
                                        (2, 2), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(cnn.conv(x, k, 2), manual, atol=1e-6)
  x8 = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
  manual8 = jax.lax.conv_general_dilated(jnp.pad(x8, ((0, 0), (0, 1), (0, 1), (0, 0))), k,
                                         (2, 2), "VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(cnn.conv(x8, k, 2), manual8, atol=1e-6)
  m = mj.pretrained.load(written["efficientnet"])
  assert m.features(np.zeros((1, 33, 33, 3), np.float32)).shape == (1, 24)  # odd sizes run


def test_the_cpu_depthwise_and_1x1_convolutions_equal_xla_convolutions():
  from mtpjax.pretrained import _cnn as cnn
  rng = np.random.default_rng(10)
  xla = lambda x, k, s, pad, groups: jax.lax.conv_general_dilated(
      x, k, (s, s), ((pad, pad), (pad, pad)) if isinstance(pad, int) else pad,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
  for size, k, s, pad in ((9, 3, 1, "SAME"), (9, 3, 2, "SAME"), (10, 5, 2, "SAME"),
                          (11, 5, 1, 2), (8, 3, 2, 1)):
    x = jnp.asarray(rng.standard_normal((2, size, size, 4)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, 1, 4)), jnp.float32)
    np.testing.assert_allclose(cnn.depthwise(x, kernel, s, pad), xla(x, kernel, s, pad, 4),
                               atol=1e-5)
    g = lambda f: jax.grad(lambda x: jnp.sum(f(x) ** 2))(x)
    np.testing.assert_allclose(g(lambda x: cnn.depthwise(x, kernel, s, pad)),
                               g(lambda x: xla(x, kernel, s, pad, 4)), atol=1e-4)
    point = jnp.asarray(rng.standard_normal((1, 1, 4, 3)), jnp.float32)
    np.testing.assert_allclose(cnn.conv(x, point, s, "SAME"), xla(x, point, s, "SAME", 1),
                               atol=1e-5)


# --- Prompts ---------------------------------------------------------------------------------

def _images(n=4, size=16, seed=6):
  return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)


def test_prompts_of_size_zero_are_bitwise_the_plain_backbone(written):
  vit = mj.pretrained.load(written["vit"][0])
  eff = mj.pretrained.load(written["efficientnet"])
  x = _images()
  plain = vit.features(x)
  for prompt in ({"tokens": jnp.zeros((0, 16))}, {"deep": jnp.zeros((2, 0, 16))},
                 {"prefix": jnp.zeros((2, 2, 0, 16))},
                 prompts.pad(16, 16, 0).apply(None, prompts.pad(16, 16, 0).init(
                     jax.random.key(0))[1])):
    np.testing.assert_array_equal(vit.features(x, prompt=prompt), plain)
  np.testing.assert_array_equal(vit.features(x, prompt={"deep": jnp.zeros((1, 0, 16))},
                                             entry_layer=1), plain)
  # An identity FiLM after stage 3 (scale 1, shift 0): equal to float rounding, not bitwise,
  # since XLA may contract the multiply-add with the stage's last operation (it does with the
  # suite's XLA CPU setting, conftest.py).
  plain = eff.features(_images(size=32))
  film = prompts.film(eff.stage_channels(3))
  np.testing.assert_allclose(
      eff.features(_images(size=32), prompt=film.apply(None, film.init(jax.random.key(0))[1]),
                   entry_layer=3), plain, rtol=2e-6, atol=1e-7)


def test_a_pad_prompt_touches_only_the_border_pixels():
  kind = prompts.pad(12, 10, 2, init_scale=1.0)
  _, task = kind.init(jax.random.key(0))
  delta = np.asarray(kind.apply(None, task)["pixels"])
  assert delta.shape == (12, 10, 3)
  np.testing.assert_array_equal(delta[2:-2, 2:-2], 0.0)
  border = np.ones((12, 10), bool)
  border[2:-2, 2:-2] = False
  assert (delta[border] != 0).all()
  assert sum(a.size for a in jax.tree.leaves(task)) == 2 * 2 * (12 + 10 - 4) * 3
  with pytest.raises(ValueError, match="does not fit"):
    prompts.pad(4, 4, 3)


def test_vpt_deep_replaces_the_prompt_positions_in_every_layer(written):
  m = mj.pretrained.load(written["vit"][0])
  x = _images(2)
  deep = jax.random.normal(jax.random.key(1), (2, 3, 16))
  # Layer 0 reads deep[0] as VPT-shallow does; layer 1 then sees deep[1], not layer 0's output
  # at those positions, so the result differs from shallow tokens, and from deep[0] twice.
  shallow = m.features(x, prompt={"tokens": deep[0]})
  got = m.features(x, prompt={"deep": deep})
  assert not np.allclose(got, shallow)
  same_first = m.features(x, prompt={"deep": deep.at[1].set(deep[0] * 0 + 5.0)})
  assert not np.allclose(got, same_first)
  # A one-layer deep prompt entering at the last layer is shallow tokens entering there.
  np.testing.assert_allclose(m.features(x, prompt={"deep": deep[1:]}, entry_layer=1),
                             m.features(x, prompt={"tokens": deep[1]}, entry_layer=1), atol=1e-6)


@pytest.mark.parametrize("which", ["vit_tokens", "cnn_film"])
def test_the_cached_lower_stages_give_the_full_path(written, which):
  if which == "vit_tokens":
    m, x, entry = mj.pretrained.load(written["vit"][0]), _images(), 1
    kind = prompts.static(3, 16)
  else:
    m, x, entry = mj.pretrained.load(written["efficientnet"]), _images(size=32), 4
    kind = prompts.film(m.stage_channels(4), init_scale=0.3)
  model = mj.compose(m.net(entry_layer=entry), None, kind)
  params = model.init(jax.random.key(0), jnp.asarray(x))
  full = model.apply(params, jnp.asarray(x))
  cached = model.apply(params, model.prepare(params, jnp.asarray(x)))
  np.testing.assert_allclose(cached, full, atol=1e-6)
  lower = m.lower_states(x, entry)
  np.testing.assert_allclose(model.apply(params, {"lower": jnp.asarray(lower)}), full, atol=1e-6)


@pytest.mark.parametrize("kind", ["pad", "film"])
def test_the_gradient_in_a_visual_prompt_matches_finite_differences(written, kind):
  m = mj.pretrained.load(written["efficientnet"])
  x = _images(2, 32)
  prompt = prompts.pad(32, 32, 3, init_scale=0.1) if kind == "pad" else prompts.film(
      m.stage_channels(2), init_scale=0.1)
  entry = 0 if kind == "pad" else 2
  f = m.logits_fn(entry)
  with jax.enable_x64(True):
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), m.params)
    _, task = prompt.init(jax.random.key(0))
    task = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), task)
    xs = jnp.asarray(x, jnp.float64)
    loss = jax.jit(lambda t: jnp.sum(
        jax.nn.log_softmax(f(params, xs, prompt.apply(None, t)))[:, 0]))
    direction = jax.tree.map(lambda a: jnp.asarray(
        np.random.default_rng(7).standard_normal(a.shape)), task)
    analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(jax.grad(loss)(task)),
                                                   jax.tree.leaves(direction)))
    eps = 1e-5
    shift = lambda s: jax.tree.map(lambda a, d: a + s * d, task, direction)
    numeric = (loss(shift(eps)) - loss(shift(-eps))) / (2 * eps)
    np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-6)


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "reptile"])
@pytest.mark.parametrize("kind", ["pad", "film"])
def test_a_visual_prompt_meta_learns_through_a_frozen_backbone(written, kind, algorithm):
  m = mj.pretrained.load(written["resnet"])
  entry = 0 if kind == "pad" else 2
  prompt = (prompts.pad(32, 32, 2) if kind == "pad"
            else prompts.film(m.stage_channels(entry)))
  model = mj.compose(m.net(entry_layer=entry), mj.linear_head(2), prompt)
  rng = np.random.default_rng(8)

  def task(i):
    x = jnp.asarray(rng.standard_normal((8, 32, 32, 3)), jnp.float32)
    y = jnp.asarray(np.arange(8) % 2)
    return mj.Episode(mj.Batch(x[:4], y[:4]), mj.Batch(x[4:], y[4:]))

  tasks = jax.tree.map(lambda *a: jnp.stack(a), task(0), task(1))
  params = model.init(jax.random.key(0), tasks.support.x[0])
  algo = mj.get_algorithm(algorithm, fast=(mj.PROMPT,), outer=(mj.PROMPT, mj.HEAD))
  learner = mj.meta_learner(mj.supervised(model.apply, mj.cross_entropy), optax.adam(1e-2),
                            algorithm=algo, inner_steps=1, inner_lr=0.5, meta_batch_size=2,
                            donate=False)
  state = learner.init(params, key=jax.random.key(1))
  before = jax.tree.map(np.asarray, state.params)
  for _ in range(2):
    state, metrics = learner.step(state, tasks)
  assert int(state.step) == 2 and np.isfinite(float(metrics["loss"]))
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params[mj.PROMPT]),
                                                      jax.tree.leaves(before[mj.PROMPT])))
  jax.tree.map(np.testing.assert_array_equal, state.params[mj.SHARED], before[mj.SHARED])


def test_bad_input_is_a_clear_error(written, tmp_path):
  vit = mj.pretrained.load(written["vit"][0])
  with pytest.raises(ValueError, match=r"NCHW\? transpose"):
    vit.features(np.zeros((1, 3, 16, 16), np.float32))
  with pytest.raises(ValueError, match="multiples of the patch size 4"):
    vit.features(np.zeros((1, 18, 18, 3), np.float32))
  with pytest.raises(ValueError, match="'tokens' .* or 'deep'"):
    vit.features(_images(1), prompt={"tokens": jnp.zeros((2, 16)), "deep": jnp.zeros((2, 2, 16))})
  with pytest.raises(ValueError, match="keys among"):
    vit.features(_images(1), prompt={"film": jnp.zeros((2, 16))})
  eff = mj.pretrained.load(written["efficientnet"])
  with pytest.raises(ValueError, match=r"FiLM prompt entering at stage 2 must be \[2, 8\]"):
    eff.features(_images(1, 32), prompt={"film": jnp.zeros((2, 5))}, entry_layer=2)
  with pytest.raises(ValueError, match="entry_layer must be an integer in \\[0, 8\\)"):
    eff.features(_images(1, 32), entry_layer=8)
  with pytest.raises(ValueError, match="use entry_layer 0"):
    eff.features(_images(1, 32), prompt={"pixels": jnp.zeros((32, 32, 3))}, entry_layer=1)
  _save(str(tmp_path / "convnext"), {"architecture": "convnext_tiny"}, {"a": np.zeros(1)})
  with pytest.raises(ValueError, match="timm architecture 'convnext_tiny' is not supported"):
    mj.pretrained.load(str(tmp_path / "convnext"))


def test_preprocess_resizes_crops_and_normalises():
  settings = {"input_size": (8, 8), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
              "crop_pct": 0.8}
  grey = np.full((2, 20, 30), 255, np.uint8)
  out = mj.pretrained.preprocess(grey, settings)
  assert out.shape == (2, 8, 8, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out, 2.0, atol=1e-5)  # (1 - 0.5) / 0.25


# --- Against timm's and transformers' references ---------------------------------------------

def _ref(name):
  path = os.path.join(DATA, name)
  if not os.path.isdir(path):
    pytest.skip(f"{path} is not present")
  return mj.pretrained.load(path), np.load(path + "-reference.npz")


def _close(mine, ref, rtol):
  np.testing.assert_allclose(mine, ref, rtol=rtol, atol=rtol * max(1.0, float(np.abs(ref).max())))


@pytest.mark.parametrize("name", ["vit", "vit-cls", "dinov2", "resnet", "resnet-cls"])
def test_tiny_checkpoints_match_transformers(name):
  m, z = _ref(f"tiny-vision/{name}")
  for pre in (("r32.", "r48.") if name == "dinov2" else ("",)):
    x = z[pre + "pixel_values"].transpose(0, 2, 3, 1)
    if m.family.__name__.endswith("_vit"):
      _, layers = jax.jit(lambda p, x: m.family.hidden_states(m.config, p, x, return_layers=True)
                          )(m.params, x)
      for i in range(m.config.num_hidden_layers + 1):
        _close(layers[i], z[f"{pre}hidden_states.{i}"], 1e-5)
      ref = z[pre + "pooler_output"] if pre + "pooler_output" in z.files else z[
          pre + "last_hidden_state"][:, 0]
    else:
      for s in range(5):
        _close(m.lower_states(x, s), z[f"hidden_states.{s}"].transpose(0, 2, 3, 1), 1e-5)
      ref = z["pooler_output"][:, :, 0, 0]
    _close(m.features(x), ref, 1e-5)
    if "logits" in z.files:
      _close(m.logits(x), z["logits"], 1e-5)


def test_efficientnet_lite0_matches_timm():
  m, z = _ref("efficientnet-lite0")
  with open(os.path.join(DATA, "efficientnet-lite0-reference.json")) as f:
    meta = json.load(f)
  for r in ("r224.", "r96."):
    x = z[r + "pixel_values"].transpose(0, 2, 3, 1)
    _close(m.features(x), z[r + "pooled"], 1e-4)
    _close(m.logits(x), z[r + "logits"], 1e-4)
    for i, stage in enumerate((1, 2, 3, 5, 7)):  # the ends of timm's five feature levels
      if f"{r}feature.{i}" in z.files:
        _close(m.lower_states(x, stage), z[f"{r}feature.{i}"].transpose(0, 2, 3, 1), 1e-4)
  top5 = list(np.argsort(-m.logits(z["r224.pixel_values"].transpose(0, 2, 3, 1))[5])[:5])
  assert top5 == list(np.argsort(-z["r224.logits"][5])[:5]) == [400, 667, 652, 887, 906]
  assert meta  # the reference's own description is present


@pytest.mark.parametrize("head", ["prototypes", "proto_maml"])
def test_few_shot_heads_meta_learn_a_late_prompt_with_cached_lower_stages(written, head):
  m = mj.pretrained.load(written["resnet"])
  model = mj.compose(m.net(entry_layer=3), None, prompts.film(m.stage_channels(3)))
  rng = np.random.default_rng(9)

  def task():
    x = jnp.asarray(rng.standard_normal((12, 32, 32, 3)), jnp.float32)
    y = jnp.asarray(np.arange(12) % 3)
    return mj.Episode(mj.Batch(x[:6], y[:6]), mj.Batch(x[6:], y[6:]))

  tasks = jax.tree.map(lambda *a: jnp.stack(a), task(), task())
  if head == "prototypes":
    h = mj.prototype_classifier(model, 3, learn_scale=True)
    algo = mj.get_algorithm("prompt_maml", outer=("prompt", "head"))
  else:
    h = mj.proto_maml(model, 3)
    algo = mj.get_algorithm("maml", fast=("prompt", "head"), outer=("prompt",), reset=("head",))
  params = h.init(jax.random.key(0), tasks.support.x[0])
  out = []
  for prepare in (model.prepare, None):  # the stages below the prompt once, or every time
    learner = mj.meta_learner(h.loss_fn, optax.sgd(0.1), algorithm=algo, inner_steps=1,
                              inner_lr=0.5, meta_batch_size=2, task_repr=h.task_repr,
                              prepare=prepare, donate=False)
    state = learner.init(params, key=jax.random.key(1))
    for _ in range(2):
      state, metrics = learner.step(state, tasks)
    assert np.isfinite(float(metrics["loss"]))
    out.append(state.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), *out)
  assert not np.array_equal(out[0][mj.PROMPT], params[mj.PROMPT])
  jax.tree.map(np.testing.assert_array_equal, out[0][mj.SHARED], params[mj.SHARED])
