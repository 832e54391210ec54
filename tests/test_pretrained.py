"""Pretrained BERT encoders: loading, exactness against PyTorch's outputs, prompts, heads."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from safetensors.numpy import save_file

import mtpjax as mj
from mtpjax import prompts
from experiments._lib import env

DATA = env.data_dir()
MINILM = os.path.join(DATA, "all-MiniLM-L6-v2")
REFERENCE = os.path.join(DATA, "all-MiniLM-L6-v2-reference")
needs_minilm = pytest.mark.skipif(not os.path.isfile(os.path.join(MINILM, "model.safetensors")),
                                  reason=f"real checkpoint not found under {DATA}")

# --- A tiny random BERT checkpoint, written in Hugging Face's format ----------------------------

WORDS = ["hello", "world", "bank", "balance", "transfer", "money", "card", "lost", "what",
         "is", "my", "the", "a", "to", "play", "music", "caf", "##e", "un", "##known"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY = dict(vocab_size=len(SPECIAL) + len(WORDS), hidden_size=16, num_hidden_layers=3,
            num_attention_heads=2, intermediate_size=32, max_position_embeddings=24,
            type_vocab_size=2, layer_norm_eps=1e-12, hidden_act="gelu", pad_token_id=0)


def hf_tensors(seed=0, cfg=TINY):
  """Random BertModel tensors under their Hugging Face names ([out, in] kernels)."""
  rng = np.random.default_rng(seed)
  d, f = cfg["hidden_size"], cfg["intermediate_size"]
  t = {"embeddings.word_embeddings.weight": (cfg["vocab_size"], d),
       "embeddings.position_embeddings.weight": (cfg["max_position_embeddings"], d),
       "embeddings.token_type_embeddings.weight": (cfg["type_vocab_size"], d),
       "embeddings.LayerNorm.weight": (d,), "embeddings.LayerNorm.bias": (d,)}
  for i in range(cfg["num_hidden_layers"]):
    p = f"encoder.layer.{i}."
    for name, shape in (("attention.self.query", (d, d)), ("attention.self.key", (d, d)),
                        ("attention.self.value", (d, d)), ("attention.output.dense", (d, d)),
                        ("intermediate.dense", (f, d)), ("output.dense", (d, f))):
      t[p + name + ".weight"] = shape
      t[p + name + ".bias"] = shape[:1]
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
      t[p + name + ".weight"] = (d,)
      t[p + name + ".bias"] = (d,)
  out = {k: rng.normal(0, 0.3, s).astype(np.float32) for k, s in t.items()}
  for k in out:
    if "LayerNorm.weight" in k:
      out[k] = 1.0 + 0.1 * out[k]
  return out


def write_checkpoint(path, *, cfg=TINY, tensors=None, tokenizer_json=False, pooling="mean",
                     weights="safetensors"):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump({"model_type": "bert", "architectures": ["BertModel"], **cfg}, f)
  with open(os.path.join(path, "vocab.txt"), "w") as f:
    f.write("\n".join(SPECIAL + WORDS) + "\n")
  tensors = hf_tensors() if tensors is None else tensors
  if weights == "safetensors":
    save_file(tensors, os.path.join(path, "model.safetensors"))
  else:
    with open(os.path.join(path, "pytorch_model.bin"), "wb") as f:
      f.write(b"not unpickled")
  if tokenizer_json:
    from tokenizers.implementations import BertWordPieceTokenizer
    BertWordPieceTokenizer(os.path.join(path, "vocab.txt"), lowercase=True).save(
        os.path.join(path, "tokenizer.json"))
  if pooling:
    os.makedirs(os.path.join(path, "1_Pooling"), exist_ok=True)
    with open(os.path.join(path, "modules.json"), "w") as f:
      json.dump([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                 {"idx": 1, "name": "1", "path": "1_Pooling",
                  "type": "sentence_transformers.models.Pooling"},
                 {"idx": 2, "name": "2", "path": "2_Normalize",
                  "type": "sentence_transformers.models.Normalize"}], f)
    with open(os.path.join(path, "1_Pooling", "config.json"), "w") as f:
      json.dump({"pooling_mode_mean_tokens": pooling == "mean",
                 "pooling_mode_cls_token": pooling == "cls"}, f)
  return path


def numpy_bert(t, ids, cfg=TINY):
  """BertModel's last hidden states [n, T, d] in plain numpy (float64), from HF tensor names:
  an independent implementation to check the JAX one against."""
  from math import erf
  gelu = np.vectorize(lambda x: 0.5 * x * (1.0 + erf(x / math.sqrt(2.0))))
  t = {k: v.astype(np.float64) for k, v in t.items()}

  def ln(x, name):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + cfg["layer_norm_eps"]) * t[name + ".weight"] + t[name + ".bias"]

  def lin(x, name):
    return x @ t[name + ".weight"].T + t[name + ".bias"]

  n, s = ids.shape
  heads, d = cfg["num_attention_heads"], cfg["hidden_size"]
  mask = ids != 0
  h = (t["embeddings.word_embeddings.weight"][ids] + t["embeddings.position_embeddings.weight"][:s]
       + t["embeddings.token_type_embeddings.weight"][0])
  h = ln(h, "embeddings.LayerNorm")
  for i in range(cfg["num_hidden_layers"]):
    p = f"encoder.layer.{i}."
    q, k, v = (lin(h, p + "attention.self." + w).reshape(n, s, heads, d // heads)
               for w in ("query", "key", "value"))
    logits = np.einsum("nqhc,nkhc->nhqk", q, k) / math.sqrt(d // heads)
    logits = np.where(mask[:, None, None, :], logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    a = np.einsum("nhqk,nkhc->nqhc", w, v).reshape(n, s, d)
    h = ln(h + lin(a, p + "attention.output.dense"), p + "attention.output.LayerNorm")
    f = lin(gelu(lin(h, p + "intermediate.dense")), p + "output.dense")
    h = ln(h + f, p + "output.LayerNorm")
  return h


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  path = write_checkpoint(str(tmp_path_factory.mktemp("tiny-bert")))
  return mj.pretrained.load(path)


SENTENCES = ["hello world", "what is my bank balance", "", "Café unknown", "transfer money to "
             "my card", "lost lost lost lost lost lost lost lost lost lost lost lost lost lost"]


# --- Exactness ------------------------------------------------------------------------------------

@needs_minilm
def test_minilm_matches_sentence_transformers_reference():
  ref = np.load(REFERENCE + ".npz")
  sentences = json.load(open(REFERENCE + ".json", encoding="utf-8"))["sentences"]
  enc = mj.pretrained.load(MINILM)
  assert enc.pooling == "mean" and enc.normalize and enc.config.num_hidden_layers == 6
  ids, mask = enc.tokenize(sentences, 32)
  np.testing.assert_array_equal(ids, ref["input_ids"])
  np.testing.assert_array_equal(mask, ref["attention_mask"].astype(bool))
  hidden = np.asarray(jax.jit(enc.net(pooling="none").apply)(enc.params, jnp.asarray(ids)))
  real = ref["attention_mask"].astype(bool)
  err_real = np.abs(hidden - ref["last_hidden_state"])[real].max()
  err_all = np.abs(hidden - ref["last_hidden_state"]).max()
  emb = mj.pretrained.encode(enc, sentences, max_len=32)
  err_emb = np.abs(emb - ref["embedding"]).max()
  print(f"max abs error: hidden states {err_real:.2e} at real tokens, {err_all:.2e} at all "
        f"positions; embeddings {err_emb:.2e}")
  assert err_all <= 1e-4 and err_real <= 1e-5 and err_emb <= 1e-5


def test_tiny_checkpoint_matches_an_independent_numpy_bert(tmp_path):
  tensors = hf_tensors(seed=3)
  for tokenizer_json in (False, True):  # vocab.txt, then tokenizer.json
    path = write_checkpoint(str(tmp_path / f"ck{int(tokenizer_json)}"), tensors=tensors,
                            tokenizer_json=tokenizer_json)
    enc = mj.pretrained.load(path)
    ids, mask = enc.tokenize(SENTENCES, 12)
    assert ids[0, 0] == 2 and ids[2, :3].tolist() == [2, 3, 0]           # [CLS] [SEP] [PAD]
    assert ids[5, -1] == 3                                                # truncated, ends in [SEP]
    np.testing.assert_array_equal(mask, ids != 0)
    want = numpy_bert(tensors, ids)
    got = np.asarray(enc.net(pooling="none").apply(enc.params, jnp.asarray(ids)))
    np.testing.assert_allclose(got[mask], want[mask], atol=2e-5)
    m = mask[..., None]
    pooled = (want * m).sum(1) / m.sum(1)
    pooled /= np.linalg.norm(pooled, axis=-1, keepdims=True)
    np.testing.assert_allclose(mj.pretrained.encode(enc, SENTENCES, max_len=12), pooled, atol=2e-5)
    cls = enc.net(pooling="cls", normalize=False).apply(enc.params, jnp.asarray(ids))
    np.testing.assert_allclose(cls, want[:, 0], atol=2e-5)


def test_a_task_model_checkpoint_with_bert_prefixed_tensors_loads_its_encoder(tmp_path, tiny):
  t = {"bert." + k: v for k, v in hf_tensors().items()}
  t["classifier.weight"] = np.zeros((4, 16), np.float32)
  enc = mj.pretrained.load(write_checkpoint(str(tmp_path / "task"), tensors=t))
  jax.tree.map(np.testing.assert_array_equal, enc.params, tiny.params)


def test_padding_cannot_change_real_positions(tiny):
  ids8, _ = tiny.tokenize(SENTENCES[:3], 8)
  ids20, mask20 = tiny.tokenize(SENTENCES[:3], 20)
  hidden = tiny.net(pooling="none")
  ctx = {"tokens": jax.random.normal(jax.random.key(1), (2, 16)),
         "prefix": jax.random.normal(jax.random.key(2), (3, 2, 2, 16))}
  h8 = hidden.apply(tiny.params, jnp.asarray(ids8), ctx)
  h20 = hidden.apply(tiny.params, jnp.asarray(ids20), ctx)
  np.testing.assert_allclose(h20[:, :8][ids8 != 0], h8[ids8 != 0], rtol=1e-5, atol=1e-6)
  # Whatever the padding token's embedding holds, nothing real changes, bit for bit.
  p2 = jax.tree.map(lambda a: a, tiny.params)
  p2["embeddings"]["word"] = p2["embeddings"]["word"].at[0].set(50.0)
  out = tiny.encoder.apply(tiny.params, jnp.asarray(ids20), ctx)
  np.testing.assert_array_equal(tiny.encoder.apply(p2, jnp.asarray(ids20), ctx), out)
  # Bucketed batches in encode give the embeddings of a fixed-length batch.
  np.testing.assert_allclose(mj.pretrained.encode(tiny, SENTENCES[:3], max_len=20),
                             tiny.encoder.apply(tiny.params, jnp.asarray(ids20)), atol=1e-6)


# --- Bad input ------------------------------------------------------------------------------------

def test_bad_checkpoints_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="neither a checkpoint directory .* nor a GGUF file"):
    mj.pretrained.load(tmp_path / "absent")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no config.json"):
    mj.pretrained.load(tmp_path / "empty")
  ck = write_checkpoint(str(tmp_path / "torch"), weights="pytorch")
  with pytest.raises(ValueError, match=r"pytorch_model.bin.*runs code.*safetensors"):
    mj.pretrained.load(ck)
  ck = write_checkpoint(str(tmp_path / "none"))
  os.remove(os.path.join(ck, "model.safetensors"))
  with pytest.raises(ValueError, match="no weights"):
    mj.pretrained.load(ck)
  ck = write_checkpoint(str(tmp_path / "roberta"))
  cfg = json.load(open(os.path.join(ck, "config.json")))
  json.dump({**cfg, "model_type": "t5"}, open(os.path.join(ck, "config.json"), "w"))
  with pytest.raises(ValueError, match=r"model_type 't5'.*supported: \['bert', 'roberta', "):
    mj.pretrained.load(ck)
  t = hf_tensors()
  del t["encoder.layer.1.attention.self.key.bias"]
  with pytest.raises(ValueError, match=r"missing tensor 'encoder.layer.1.attention.self.key.bias'"):
    mj.pretrained.load(write_checkpoint(str(tmp_path / "missing"), tensors=t))
  t = hf_tensors()
  t["encoder.layer.2.intermediate.dense.weight"] = np.zeros((16, 32), np.float32)
  with pytest.raises(ValueError, match=r"'encoder.layer.2.intermediate.dense.weight' has shape "
                                       r"\(16, 32\), expected \(32, 16\)"):
    mj.pretrained.load(write_checkpoint(str(tmp_path / "shape"), tensors=t))
  small = {**TINY, "vocab_size": TINY["vocab_size"] - 3}
  t = hf_tensors(cfg=small)
  with pytest.raises(ValueError, match=r"tokenizer .* has 25 tokens but the embedding table has "
                                       r"22 rows"):
    mj.pretrained.load(write_checkpoint(str(tmp_path / "vocab"), cfg=small, tensors=t))


def test_max_len_beyond_the_position_table_is_a_clear_error(tiny):
  with pytest.raises(ValueError, match="max_len 30 exceeds the checkpoint's position table of 24"):
    tiny.tokenize(["hello"], 30)
  with pytest.raises(ValueError, match="max_len 30 exceeds"):
    tiny.encoder.apply(tiny.params, jnp.ones((1, 30), jnp.int32))
  ids = jnp.asarray(tiny.tokenize(["hello"], 20)[0])
  with pytest.raises(ValueError, match=r"text 20 \+ prompt 8\) exceed .* 24"):
    tiny.encoder.apply(tiny.params, ids, {"tokens": jnp.zeros((8, 16))})
  with pytest.raises(ValueError, match="entry_layer must be an integer in"):
    tiny.net(entry_layer=3)
  with pytest.raises(ValueError, match=r"prefix entering at layer 1 of 3 must be \[2, 2, P, 16\]"):
    tiny.net(entry_layer=1).apply(tiny.params, ids, {"prefix": jnp.zeros((3, 2, 1, 16))})


@pytest.mark.parametrize("entry_layer", [0, 1])
def test_token_ids_outside_the_vocabulary_raise_eagerly_and_give_nan_under_jit(tiny, entry_layer):
  # jnp.take read -1 as the last token (a finite, wrong embedding) and vocab as NaN, silently.
  vocab = tiny.config.vocab_size
  net = tiny.net(entry_layer=entry_layer)
  ids = np.asarray(tiny.tokenize(["hello world", "what"], 6)[0])
  for bad in (-1, vocab):
    wrong = ids.copy()
    wrong[1, 1] = bad
    with pytest.raises(ValueError, match=rf"token ids must be in \[0, {vocab}\).*\[{bad}\] \(1 "):
      net.apply(tiny.params, jnp.asarray(wrong))
    out = jax.jit(net.apply)(tiny.params, jnp.asarray(wrong))
    assert np.isfinite(out[0]).all() and np.isnan(out[1]).all()  # only the bad row
  np.testing.assert_allclose(jax.jit(net.apply)(tiny.params, jnp.asarray(ids)),
                             net.apply(tiny.params, jnp.asarray(ids)), atol=1e-6)


# --- Prompts on the pretrained encoder ------------------------------------------------------------

@pytest.mark.parametrize("entry_layer", [0, 2])
def test_length_zero_prompt_and_prefix_are_bitwise_the_plain_encoder(tiny, entry_layer):
  net = tiny.net(entry_layer=entry_layer)
  ids = jnp.asarray(tiny.tokenize(SENTENCES, 12)[0])
  plain = net.apply(tiny.params, ids)
  depth = 3 - entry_layer
  for ctx in ({"tokens": jnp.zeros((0, 16))}, {"prefix": jnp.zeros((depth, 2, 0, 16))},
              {"tokens": jnp.zeros((0, 16)), "prefix": jnp.zeros((depth, 2, 0, 16))}):
    np.testing.assert_array_equal(net.apply(tiny.params, ids, ctx), plain)
  # Any entry layer: the same layers, split into two programs. Equal to float rounding, not
  # bitwise: XLA may fuse (and contract multiply-adds) differently across the split (it does
  # with the suite's XLA CPU setting, conftest.py).
  np.testing.assert_allclose(tiny.net().apply(tiny.params, ids), plain, rtol=2e-6, atol=1e-7)
  assert not np.allclose(net.apply(tiny.params, ids, {"tokens": jnp.ones((2, 16))}), plain)
  assert not np.allclose(net.apply(tiny.params, ids, {"prefix": jnp.ones((depth, 2, 1, 16))}),
                         plain)


def test_a_word_prompt_at_the_input_is_those_words_inserted_after_cls(tiny):
  ids = tiny.tokenize(["what is my bank balance"], 12)[0]
  words = [tiny.tokenizer.token_to_id(w) for w in ("play", "music")]
  prompt = prompts.from_tokens(mj.pretrained.token_embeddings(tiny.params), words)
  hidden = tiny.net(pooling="none")
  got = hidden.apply(tiny.params, jnp.asarray(ids), {"tokens": prompt})
  inserted = np.concatenate([ids[:, :1], [words], ids[:, 1:-2]], axis=1)
  want = hidden.apply(tiny.params, jnp.asarray(inserted))
  keep = np.r_[0, 3:12]  # the text positions, without the two inserted words
  np.testing.assert_allclose(got[:, :10], want[:, keep][:, :10], rtol=1e-5, atol=1e-5)


def test_late_prompt_with_cached_lower_layers_equals_the_uncached_prompt(tiny):
  ids = jnp.asarray(tiny.tokenize(SENTENCES, 12)[0])
  net = tiny.net(entry_layer=2)
  ctx = {"tokens": jax.random.normal(jax.random.key(0), (4, 16)),
         "prefix": jax.random.normal(jax.random.key(1), (1, 2, 3, 16))}
  cache = net.prepare(tiny.params, ids)
  assert set(cache) == {"ids", "lower"}
  np.testing.assert_array_equal(net.apply(tiny.params, cache, ctx),
                                net.apply(tiny.params, ids, ctx))
  np.testing.assert_array_equal(net.embed(tiny.params, cache), net.embed(tiny.params, ids))
  # The lower layers really are the first two layers of the plain encoder.
  two = jax.tree.map(lambda a: a, tiny.params)
  two["layers"] = jax.tree.map(lambda a: a[:2], two["layers"])
  cfg2 = mj.pretrained.BertConfig(**{**TINY, "num_hidden_layers": 2})
  want = mj.pretrained.encoder(cfg2, weights=two, pooling="none").apply(two, ids)
  mask = np.asarray(ids) != 0
  np.testing.assert_allclose(np.asarray(cache["lower"])[mask], np.asarray(want)[mask], atol=1e-6)


def tiny_family(tiny, ways=3, shots=1, queries=2):
  texts = [f"{w} {v}" for w in WORDS[:6] for v in WORDS[6:10]]
  labels = np.repeat(np.arange(6), 4)
  ids, _ = tiny.tokenize(texts, 8)
  return mj.tasks.text.episodes(ids, labels, ways=ways, shots=shots, queries=queries,
                                vocab_size=tiny.config.vocab_size)


# composed and ensembled prompts reach the encoder as tokens, as static ones do (their
# meta-learning is tested in test_prompts.py); these four cover each way in: tokens, per-layer
# prefixes, a prompt generated from the support set, a pool read by each utterance.
KINDS = {
    "static": lambda: prompts.static(3, 16),
    "prefix": lambda: prompts.static(2, 16, prefix_depth=2),
    "generated": lambda: prompts.generated(2, 16, repr_dim=4, hidden=8),
    "ensembled_instance": lambda: prompts.ensembled(3, 2, 16, key_dim=4, instance=True),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_way_a_prompt_enters_adapts_on_the_frozen_encoder_and_leaves_it_bitwise_unchanged(tiny, kind):
  fam = tiny_family(tiny)
  net = tiny.net(entry_layer=1)
  model = mj.compose(net, mj.linear_head(3), KINDS[kind]())
  params = model.init(jax.random.key(0), fam.sample(jax.random.key(0)).support.x)
  loss_fn = mj.supervised(model.apply, mj.cross_entropy)
  algo = mj.get_algorithm("maml", fast=("prompt", "head"),
                          outer=("prompt", "prompt_shared", "head"))
  learner = mj.meta_learner(loss_fn, optax.adam(1e-2), algorithm=algo, inner_steps=1,
                            inner_lr=0.5, meta_batch_size=2, sample=fam.sample,
                            prepare=model.prepare)
  state = learner.init(params, key=jax.random.key(1))
  before = jax.tree.map(np.asarray, state.params)
  for _ in range(2):
    state, metrics = learner.step(state)
    assert np.isfinite(metrics["loss"])
  after = jax.tree.map(np.asarray, state.params)
  jax.tree.map(np.testing.assert_array_equal, after["shared"], before["shared"])
  jax.tree.map(np.testing.assert_array_equal, after["shared"],
               jax.tree.map(np.asarray, tiny.params))
  # The frozen encoder has no optimizer state: Adam keeps two moments of the outer roles only.
  outer_size = sum(a.size for r in ("prompt", "prompt_shared", "head") if r in after
                   for a in jax.tree.leaves(after[r]))
  opt_size = sum(np.size(a) for a in jax.tree.leaves(state.opt_state))
  assert opt_size == 2 * outer_size + 1
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after["head"]),
                                                    jax.tree.leaves(before["head"]))]
  assert any(moved)
  # Inner adaptation on one task moves the prompt and nothing in the encoder.
  support = fam.sample(jax.random.key(5)).support
  adapted, _ = jax.jit(learner.adapt)(params, support._replace(x=model.prepare(params, support.x)))
  jax.tree.map(np.testing.assert_array_equal, adapted["shared"], params["shared"])
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(adapted["prompt"]),
                                                      jax.tree.leaves(params["prompt"])))


def test_prepare_of_an_adapting_role_is_an_error(tiny):
  fam = tiny_family(tiny)
  model = mj.compose(tiny.net(entry_layer=1), mj.linear_head(3), prompts.static(2, 16))
  params = model.init(jax.random.key(0), fam.sample(jax.random.key(0)).support.x)
  learner = mj.meta_learner(mj.supervised(model.apply, mj.cross_entropy), optax.sgd(0.1),
                            algorithm="maml", meta_batch_size=2, sample=fam.sample,
                            prepare=model.prepare)
  with pytest.raises(ValueError, match="prepare reads role 'shared', which algorithm 'maml' adapts"):
    learner.step(learner.init(params, key=jax.random.key(1)))


def test_late_prompt_meta_step_with_the_cache_equals_the_step_without_it(tiny):
  fam = tiny_family(tiny)
  model = mj.compose(tiny.net(entry_layer=2), None, prompts.static(2, 16))
  pc = mj.prototype_classifier(model, 3, learn_scale=True)
  params = pc.init(jax.random.key(0), fam.sample(jax.random.key(0)).support.x)
  algo = mj.get_algorithm("prompt_maml", outer=("prompt", "head"))
  out = []
  for prepare in (model.prepare, None):
    learner = mj.meta_learner(pc.loss_fn, optax.sgd(0.1), algorithm=algo, inner_steps=1,
                              inner_lr=0.5, meta_batch_size=2, sample=fam.sample,
                              task_repr=pc.task_repr, prepare=prepare)
    state, metrics = learner.step(learner.init(params, key=jax.random.key(1)))
    out.append((state.params, metrics))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               out[0][0], out[1][0])
  np.testing.assert_allclose(out[0][1]["loss"], out[1][1]["loss"], rtol=1e-6)


# --- Heads ------------------------------------------------------------------------------------

def test_proto_maml_initial_head_gives_exactly_the_prototype_predictions(tiny):
  fam = tiny_family(tiny, ways=4, shots=2, queries=2)
  model = mj.compose(tiny.net(), None, prompts.static(2, 16))
  for distance, scale in (("sqeuclidean", 1.0), ("cosine", 10.0)):
    pm = mj.proto_maml(model, 4, distance=distance, scale=scale)
    pc = mj.prototype_classifier(model, 4, distance=distance, scale=scale)
    params = pm.init(jax.random.key(0), fam.sample(jax.random.key(0)).support.x)
    np.testing.assert_array_equal(params["head"]["w"], 0.0)
    for seed in range(3):
      ep = fam.sample(jax.random.key(seed))
      a = pm.logits(params, ep.query.x, pm.task_repr(params, ep.support))
      b = pc.logits(params, ep.query.x, pc.task_repr(params, ep.support))
      np.testing.assert_array_equal(np.argmax(a, -1), np.argmax(b, -1))
      np.testing.assert_allclose(jax.nn.softmax(a), jax.nn.softmax(b), atol=1e-5)


def test_prototype_head_scores_against_the_support_class_means():
  z_s = jnp.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
  y_s = jnp.array([0, 1, 0])
  c = mj.class_means(z_s, y_s, 2)
  np.testing.assert_allclose(c, [[2.0, 0.0], [0.0, 2.0]])
  z = jnp.array([[1.0, 1.0]])
  np.testing.assert_allclose(mj.prototype_logits(z, c, distance="sqeuclidean", scale=0.5),
                             [[-0.5 * 2.0, -0.5 * 2.0]])
  np.testing.assert_allclose(mj.prototype_logits(z, c, distance="cosine", scale=2.0),
                             [[2.0 / math.sqrt(2), 2.0 / math.sqrt(2)]], rtol=1e-6)


# --- Text episodes ----------------------------------------------------------------------------

def test_text_episodes_invariants_with_uneven_classes():
  counts = [5, 9, 4, 7, 12]
  labels = np.concatenate([np.full(c, k) for k, c in enumerate(counts)])
  ids = np.stack([np.array([2, 5 + i, 3, 0]) for i in range(labels.size)]).astype(np.int32)
  fam = mj.tasks.text.episodes(ids, labels, ways=3, shots=2, queries=2)
  firsts = set()
  for seed in range(30):
    ep = jax.jit(fam.sample)(jax.random.key(seed))
    s_rows = np.asarray(ep.support.x)[:, 1] - 5
    q_rows = np.asarray(ep.query.x)[:, 1] - 5
    assert not set(s_rows) & set(q_rows) and len(set(s_rows)) == 6 and len(set(q_rows)) == 6
    classes = []
    for k in range(3):  # every example of label k belongs to one and the same class
      cls = {int(labels[r]) for r in np.r_[s_rows[ep.support.y == k], q_rows[ep.query.y == k]]}
      assert len(cls) == 1
      classes.append(cls.pop())
    assert len(set(classes)) == 3
    firsts.add(classes[0])
  assert len(firsts) > 2  # labels are permuted across episodes


def test_text_episodes_gather_each_rows_features_with_its_ids(tiny):
  fam = tiny_family(tiny)
  ids = np.asarray(fam.ids)
  feats = {"row": np.arange(ids.shape[0], dtype=np.float32)[:, None] * np.ones((1, 3))}
  with_f = mj.tasks.text.episodes(ids, np.repeat(np.arange(6), 4), ways=3, shots=1, queries=2,
                                  features=feats)
  for seed in range(5):
    key = jax.random.key(seed)
    plain, ep = fam.sample(key), with_f.sample(key)
    for a, b in ((plain.support, ep.support), (plain.query, ep.query)):
      np.testing.assert_array_equal(a.x, b.x["ids"])  # the same episode as without features
      np.testing.assert_array_equal(a.y, b.y)
      rows = np.asarray(b.x["row"])[:, 0].astype(int)
      np.testing.assert_array_equal(ids[rows], b.x["ids"])  # features of the very same rows
  with pytest.raises(ValueError, match="one row per example"):
    mj.tasks.text.episodes(ids, np.repeat(np.arange(6), 4), ways=3, shots=1, queries=2,
                           features={"row": np.zeros((3, 2))})


def test_lower_states_are_the_cached_lower_layers_and_zero_at_padding(tiny):
  ids = np.asarray(tiny.tokenize(SENTENCES, 12)[0])
  net = tiny.net(entry_layer=2)
  want = np.asarray(net.prepare(tiny.params, jnp.asarray(ids))["lower"])
  got = mj.pretrained.lower_states(tiny, ids, 2, batch_size=2)  # length buckets of 2 texts
  mask = ids != 0
  np.testing.assert_allclose(got[mask], want[mask], atol=1e-5)
  assert not got[~mask].any()
  ctx = {"tokens": jax.random.normal(jax.random.key(0), (3, 16))}
  np.testing.assert_allclose(net.apply(tiny.params, {"ids": ids, "lower": got}, ctx),
                             net.apply(tiny.params, jnp.asarray(ids), ctx), atol=1e-5)
  with pytest.raises(ValueError, match=r"entry_layer must be an integer in \[1, 3\)"):
    mj.pretrained.lower_states(tiny, ids, 0)


def test_text_episode_errors_name_the_class_and_counts():
  labels = np.array([0] * 5 + [1] * 2 + [2] * 5)
  ids = np.ones((12, 4), np.int32)
  with pytest.raises(ValueError, match=r"3 = 4 examples per class .* 'refund' has 2"):
    mj.tasks.text.episodes(ids, labels, ways=2, shots=1, queries=3,
                           class_names=["a", "refund", "c"])
  with pytest.raises(ValueError, match="ways=4 exceeds the 3 classes"):
    mj.tasks.text.episodes(ids, labels, ways=4, shots=1, queries=1)
  with pytest.raises(ValueError, match=r"token ids must lie in \[0, 1\)"):
    mj.tasks.text.episodes(ids, labels, ways=2, shots=1, queries=1, vocab_size=1)


def test_tokenizer_handles_unicode_and_the_empty_string(tiny):
  ids, mask = tiny.tokenize(["", "😀 ☃ 我的 café", "hello world " * 100], 10)
  assert ids.shape == (3, 10) and ids.dtype == np.int32
  assert ids[0, :2].tolist() == [2, 3] and mask[0].sum() == 2
  assert mask[2].all() and ids[2, -1] == 3
  emb = mj.pretrained.encode(tiny, ["", "😀 ☃ 我的 café"], max_len=10)
  assert np.all(np.isfinite(emb))
  np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)


def test_encode_of_one_string_is_one_embedding(tiny):
  # A str is a Sequence[str] of characters: it must not become one embedding per character.
  one = mj.pretrained.encode(tiny, "what is my balance", max_len=10)
  assert one.shape == (tiny.config.hidden_size,)
  np.testing.assert_array_equal(one, mj.pretrained.encode(tiny, ["what is my balance"],
                                                          max_len=10)[0])
  with pytest.raises(ValueError, match="item 1 is int"):
    mj.pretrained.encode(tiny, ["fine", 3], max_len=10)


# --- Labelled text sets from JSONL ---------------------------------------------------------

def write_jsonl(path, rows, extra_lines=()):
  with open(path, "w", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
    for line in extra_lines:
      f.write(line + "\n")
  return str(path)


def test_load_jsonl_reads_intents_or_labels_and_ignores_extra_fields(tmp_path):
  rows = [{"text": t, "intent": i, "domain": d, "split": "train", "whatever": [1]}
          for t, i, d in [("freeze my card", "lost_card", "cards"), ("", "lost_card", "cards"),
                          ("我的卡丢了 😀", "lost_card", "cards"), ("balance?", "balance", "bank"),
                          ("how much money", "balance", "bank"), ("hi", "oos", "oos")]]
  rows.append({"text": "val line", "intent": "balance", "domain": "bank", "split": "val"})
  with pytest.warns(UserWarning, match="left out 1 examples"):
    ts = mj.tasks.text.load_jsonl(write_jsonl(tmp_path / "a.jsonl", rows), splits=("train",))
  assert ts.classes == ["balance", "lost_card"] and ts.groups == ["bank", "cards"]
  assert ts.labels.tolist() == [1, 1, 1, 0, 0] and ts.texts[1] == "" and "val line" not in ts.texts
  assert ts.classes_in(["cards"]) == ["lost_card"]
  sub = ts.subset(["lost_card"])
  assert sub.labels.tolist() == [0, 0, 0] and sub.groups == ["cards"]
  labelled = [{"text": f"t{i}", "label": i % 3 - 1} for i in range(9)]  # -1 is left out
  with pytest.warns(UserWarning, match="negative labels"):
    ts = mj.tasks.text.load_jsonl(write_jsonl(tmp_path / "b.jsonl", labelled))
  assert ts.classes == ["0", "1"] and ts.groups is None and len(ts.texts) == 6


def test_load_jsonl_errors_name_the_line(tmp_path):
  ok = {"text": "a", "intent": "x"}
  with pytest.raises(ValueError, match=r"c.jsonl, line 2 is not JSON"):
    mj.tasks.text.load_jsonl(write_jsonl(tmp_path / "c.jsonl", [ok], ["{broken"]))
  with pytest.raises(ValueError, match=r"line 2 needs a string field 'text'"):
    mj.tasks.text.load_jsonl(write_jsonl(tmp_path / "d.jsonl", [ok, {"intent": "x"}]))
  with pytest.raises(ValueError, match=r"line 1 needs 'intent' \(a class name\) or an integer"):
    mj.tasks.text.load_jsonl(write_jsonl(tmp_path / "e.jsonl", [{"text": "a", "label": "x"}]))
  with pytest.raises(ValueError, match=r"class 'x' is in domain 'b' here and 'a' before"):
    mj.tasks.text.load_jsonl(write_jsonl(tmp_path / "f.jsonl", [
        {**ok, "domain": "a"}, {**ok, "domain": "b"}]))
  with pytest.raises(FileNotFoundError):
    mj.tasks.text.load_jsonl(str(tmp_path / "absent.jsonl"))
  ts = mj.tasks.text.load_jsonl(write_jsonl(tmp_path / "g.jsonl", [ok]))
  with pytest.raises(ValueError, match="unknown classes"):
    ts.subset(["y"])


def test_load_jsonl_takes_a_bom_and_refuses_mixed_label_fields_or_domains(tmp_path):
  rows = [{"text": "a", "intent": "x", "domain": "d"}, {"text": "b", "intent": "y", "domain": "d"}]
  path = tmp_path / "bom.jsonl"
  path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in rows).encode())
  ts = mj.tasks.text.load_jsonl(str(path))                  # a spreadsheet export's BOM
  assert ts.classes == ["x", "y"] and ts.groups == ["d", "d"]
  # 1 and "1" would be two classes both named '1'.
  with pytest.raises(ValueError, match=r"line 2 labels its class with 'label', but line 1 "
                                       r"with 'intent'"):
    mj.tasks.text.load_jsonl(write_jsonl(tmp_path / "mix.jsonl", [
        {"text": "a", "intent": "1"}, {"text": "b", "label": 1}]))
  # One line without a domain would silently turn the grouping off.
  with pytest.raises(ValueError, match=r"line\(s\) 3 lacks a 'domain' field, unlike the other 2"):
    mj.tasks.text.load_jsonl(write_jsonl(tmp_path / "dom.jsonl", rows + [
        {"text": "c", "intent": "z"}]))


@pytest.mark.skipif(not os.path.isfile(os.path.join(DATA, "clinc150.jsonl")),
                    reason=f"clinc150.jsonl not found under {DATA}")
def test_clinc150_has_150_intents_in_10_domains_without_out_of_scope():
  # Out-of-scope lines have their own splits (oos_train, ...), so split="train" drops them.
  ts = mj.tasks.text.load_jsonl(os.path.join(DATA, "clinc150.jsonl"), splits=("train",))
  assert len(ts.classes) == 150 and len(set(ts.groups)) == 10 and "oos" not in ts.classes
  assert np.bincount(ts.labels).tolist() == [100] * 150
  banking = ts.classes_in(["banking"])
  assert len(banking) == 15
  assert set(banking).isdisjoint(ts.classes_in(["credit_cards"]))
