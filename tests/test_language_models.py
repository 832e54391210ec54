"""Decoder language models (Llama family, Qwen2, GPT-2, GGUF) and masked-LM heads.

Checkpoints the tests write themselves (safetensors, tokenizer.json, a GGUF written with the
gguf package) keep the loaders covered without ../shared/data; an independent float64 numpy
forward, written from the layouts alone, checks the mathematics. The references in
../shared/data (what transformers computes) are compared where the data is present.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mtpjax as mj
from mtpjax.pretrained import _generate as gen
from mtpjax.pretrained import _llama as llama

DATA = os.environ.get("MTPJAX_DATA_DIR") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")
SENTENCES = ["what is my balance", "set an alarm for 7 am", "how do you say fast in spanish",
             "book a table for two tonight", "what's the weather like", "play some jazz",
             "transfer money to my savings account", "remind me to call mom"]


# --- Checkpoints written here -----------------------------------------------------------------

def write_tokenizer(path, bos=True):
  """A byte-level BPE tokenizer (tokenizers format) trained on SENTENCES: ids 0-2 are
  <s> </s> <pad>; with bos, <s> is prepended as Llama's tokenizer does."""
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers, processors, trainers

  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(SENTENCES * 3, trainer)
  if bos:
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
  tok.save(path)
  return tok


def llama_config(**kw):
  cfg = dict(model_type="llama", vocab_size=320, hidden_size=32, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=48,
             max_position_embeddings=96, rms_norm_eps=1e-5,
             rope_parameters={"rope_theta": 500.0, "rope_type": "default"},
             tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, pad_token_id=2)
  cfg.update(kw)
  return cfg


def llama_tensors(cfg, seed=0):
  """HF-named random tensors of a Llama-family config ([out, in] kernels)."""
  rng = np.random.default_rng(seed)
  d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
  hd = cfg["head_dim"]
  qd, kd = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
  r = lambda *s: (0.2 * rng.standard_normal(s)).astype(np.float32)
  t = {"model.embed_tokens.weight": r(v, d), "model.norm.weight": 1 + r(d)}
  qkv_bias = cfg["model_type"] == "qwen2"
  for i in range(cfg["num_hidden_layers"]):
    p = f"model.layers.{i}."
    t.update({p + "input_layernorm.weight": 1 + r(d), p + "post_attention_layernorm.weight": 1 + r(d),
              p + "self_attn.q_proj.weight": r(qd, d), p + "self_attn.k_proj.weight": r(kd, d),
              p + "self_attn.v_proj.weight": r(kd, d), p + "self_attn.o_proj.weight": r(d, qd),
              p + "mlp.gate_proj.weight": r(f, d), p + "mlp.up_proj.weight": r(f, d),
              p + "mlp.down_proj.weight": r(d, f)})
    if qkv_bias:
      t.update({p + "self_attn.q_proj.bias": r(qd), p + "self_attn.k_proj.bias": r(kd),
                p + "self_attn.v_proj.bias": r(kd)})
  if not cfg["tie_word_embeddings"]:
    t["lm_head.weight"] = r(v, d)
  return t


def gpt2_config(**kw):
  cfg = dict(model_type="gpt2", vocab_size=320, n_embd=32, n_layer=2, n_head=4, n_positions=64,
             layer_norm_epsilon=1e-5, activation_function="gelu_new", bos_token_id=1,
             eos_token_id=1, pad_token_id=2)
  cfg.update(kw)
  return cfg


def gpt2_tensors(cfg, seed=0):
  rng = np.random.default_rng(seed)
  d, v, n = cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"]
  r = lambda *s: (0.2 * rng.standard_normal(s)).astype(np.float32)
  t = {"transformer.wte.weight": r(v, d), "transformer.wpe.weight": r(n, d),
       "transformer.ln_f.weight": 1 + r(d), "transformer.ln_f.bias": r(d)}
  for i in range(cfg["n_layer"]):
    p = f"transformer.h.{i}."
    t.update({p + "ln_1.weight": 1 + r(d), p + "ln_1.bias": r(d), p + "ln_2.weight": 1 + r(d),
              p + "ln_2.bias": r(d), p + "attn.c_attn.weight": r(d, 3 * d),
              p + "attn.c_attn.bias": r(3 * d), p + "attn.c_proj.weight": r(d, d),
              p + "attn.c_proj.bias": r(d), p + "mlp.c_fc.weight": r(d, 4 * d),
              p + "mlp.c_fc.bias": r(4 * d), p + "mlp.c_proj.weight": r(4 * d, d),
              p + "mlp.c_proj.bias": r(d)})
  return t


def write_checkpoint(path, cfg, tensors, bos=True):
  from safetensors.numpy import save_file
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(cfg, f)
  save_file(tensors, os.path.join(path, "model.safetensors"))
  write_tokenizer(os.path.join(path, "tokenizer.json"), bos=bos)
  return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("lm")
  out = {}
  for name, cfg, tensors, bos in (
      ("llama", llama_config(), None, True),
      ("qwen2", llama_config(model_type="qwen2", tie_word_embeddings=True), None, False),
      ("gpt2", gpt2_config(), None, False)):
    tensors = gpt2_tensors(cfg) if name == "gpt2" else llama_tensors(cfg)
    out[name] = (write_checkpoint(str(root / name), cfg, tensors, bos), cfg, tensors)
  return out


@pytest.fixture(scope="module")
def lm(tiny):
  return mj.pretrained.load(tiny["llama"][0])


# --- An independent float64 numpy forward -----------------------------------------------------

def _np_rope(x, pos, base):
  hd = x.shape[-1]
  inv = 1.0 / base ** (np.arange(0, hd, 2) / hd)
  ang = pos[:, None] * inv[None]
  cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
  rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
  return x * cos[:, None] + rot * sin[:, None]


def np_llama_logits(cfg, t, ids, late=None):
  """Logits [T, V] of one unpadded sequence, float64, from HF tensor names alone.

  late=(k, tokens [P, d], at): a late prompt, inserted at position `at` of the stream entering
  layer k; below k the text runs alone, from k on the P + T tokens take positions 0, 1, ..."""
  t = {k: v.astype(np.float64) for k, v in t.items()}
  H, Hk, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
  eps, base = cfg["rms_norm_eps"], cfg["rope_parameters"]["rope_theta"]
  norm = lambda x, w: x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * w
  lin = lambda x, name: x @ t[name + ".weight"].T + t.get(name + ".bias", 0.0)
  x = t["model.embed_tokens.weight"][ids]
  n = len(ids)
  pos = np.arange(n)
  for i in range(cfg["num_hidden_layers"]):
    if late is not None and i == late[0]:
      x = np.concatenate([x[:late[2]], np.asarray(late[1], np.float64), x[late[2]:]])
      n = len(x)
      pos = np.arange(n)
    p = f"model.layers.{i}."
    a = norm(x, t[p + "input_layernorm.weight"])
    q = _np_rope(lin(a, p + "self_attn.q_proj").reshape(n, H, hd), pos, base)
    k = _np_rope(lin(a, p + "self_attn.k_proj").reshape(n, Hk, hd), pos, base)
    v = lin(a, p + "self_attn.v_proj").reshape(n, Hk, hd)
    out = np.zeros((n, H, hd))
    for h in range(H):
      kv = h // (H // Hk)
      s = q[:, h] @ k[:, kv].T / np.sqrt(hd)
      s = np.where(np.tril(np.ones((n, n))) > 0, s, -np.inf)
      w = np.exp(s - s.max(-1, keepdims=True))
      out[:, h] = (w / w.sum(-1, keepdims=True)) @ v[:, kv]
    x = x + out.reshape(n, H * hd) @ t[p + "self_attn.o_proj.weight"].T
    m = norm(x, t[p + "post_attention_layernorm.weight"])
    g = lin(m, p + "mlp.gate_proj")
    x = x + (g / (1 + np.exp(-g)) * lin(m, p + "mlp.up_proj")) @ t[p + "mlp.down_proj.weight"].T
  x = norm(x, t["model.norm.weight"])
  head = t["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else t["lm_head.weight"]
  return x @ head.T


def np_gpt2_logits(cfg, t, ids):
  t = {k[len("transformer."):]: v.astype(np.float64) for k, v in t.items()}
  H, d, eps = cfg["n_head"], cfg["n_embd"], cfg["layer_norm_epsilon"]
  hd = d // H
  ln = lambda x, p: ((x - x.mean(-1, keepdims=True))
                     / np.sqrt(x.var(-1, keepdims=True) + eps) * t[p + ".weight"] + t[p + ".bias"])
  conv = lambda x, p: x @ t[p + ".weight"] + t[p + ".bias"]
  gelu = lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
  n = len(ids)
  x = t["wte.weight"][ids] + t["wpe.weight"][:n]
  for i in range(cfg["n_layer"]):
    p = f"h.{i}."
    qkv = conv(ln(x, p + "ln_1"), p + "attn.c_attn")
    q, k, v = (qkv[:, j * d:(j + 1) * d].reshape(n, H, hd) for j in range(3))
    out = np.zeros((n, H, hd))
    for h in range(H):
      s = q[:, h] @ k[:, h].T / np.sqrt(hd)
      s = np.where(np.tril(np.ones((n, n))) > 0, s, -np.inf)
      w = np.exp(s - s.max(-1, keepdims=True))
      out[:, h] = (w / w.sum(-1, keepdims=True)) @ v[:, h]
    x = x + conv(out.reshape(n, d), p + "attn.c_proj")
    x = x + conv(gelu(conv(ln(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
  return ln(x, "ln_f") @ t["wte.weight"].T


@pytest.mark.parametrize("name", ["llama", "qwen2", "gpt2"])
def test_loaded_checkpoints_compute_what_an_independent_float64_forward_computes(tiny, name):
  path, cfg, tensors = tiny[name]
  m = mj.pretrained.load(path)
  ids, mask = m.tokenize(SENTENCES[:4])
  logits = m.logits(ids, mask)
  ref_fn = np_gpt2_logits if name == "gpt2" else np_llama_logits
  for i in range(4):
    n = int(mask[i].sum())
    ref = ref_fn(cfg, tensors, ids[i, :n])
    np.testing.assert_allclose(logits[i, :n], ref, atol=1e-4, rtol=1e-4)
  assert m.insert_at == (1 if name == "llama" else 0)  # prompt tokens go after <s>


# --- The mathematics of the cache, padding and prompts --------------------------------------------

def _recompute_greedy(lm, ids, n_new, prompt=None, prefix_positions="after", entry_layer=0):
  """Greedy decoding without a cache: the whole sequence recomputed at every step."""
  seq = list(ids)
  out, step_logits = [], []
  width = len(ids) + n_new  # one padded width: one compile (padding cannot reach real tokens)
  shift = 0 if prompt is None or "tokens" not in prompt else prompt["tokens"].shape[-2]
  for _ in range(n_new):
    arr = np.full((1, width), lm.pad_id, np.int32)
    arr[0, :len(seq)] = seq
    lg = lm.logits(arr, np.arange(width)[None] < len(seq), prompt=prompt,
                   prefix_positions=prefix_positions,
                   entry_layer=entry_layer)[0, len(seq) + shift - 1]
    tok = int(np.argmax(lg))
    out.append(tok)
    step_logits.append(lg)
    seq.append(tok)
  return np.asarray(out), np.asarray(step_logits)


@pytest.mark.parametrize("prompt_kind", ["none", "tokens", "prefix", "prefix_from_0", "both",
                                         "late_tokens", "late_both"])
def test_cached_decoding_equals_recomputing_the_whole_sequence(lm, prompt_kind):
  rng = np.random.default_rng(1)
  cfg = lm.config
  entry = 1 if prompt_kind.startswith("late") else 0
  tokens = jnp.asarray(0.3 * rng.standard_normal((3, cfg.hidden_size)), jnp.float32)
  prefix = jnp.asarray(0.3 * rng.standard_normal((cfg.num_hidden_layers - entry, 2, 2,
                                                  cfg.kv_dim)), jnp.float32)
  prompt = {"none": None, "tokens": {"tokens": tokens}, "prefix": {"prefix": prefix},
            "prefix_from_0": {"prefix": prefix}, "both": {"tokens": tokens, "prefix": prefix},
            "late_tokens": {"tokens": tokens}, "late_both": {"tokens": tokens, "prefix": prefix}
            }[prompt_kind]
  pp = "from_0" if prompt_kind == "prefix_from_0" else "after"
  ids, mask = lm.tokenize([SENTENCES[2]])
  new, step_logits = lm.generate(ids, mask, max_new_tokens=6, prompt=prompt,
                                 prefix_positions=pp, entry_layer=entry, return_logits=True)
  want, want_logits = _recompute_greedy(lm, ids[0], 6, prompt, pp, entry)
  np.testing.assert_array_equal(new[0], want)
  np.testing.assert_allclose(step_logits[0], want_logits, atol=2e-5, rtol=1e-5)


def test_left_and_right_padding_give_each_sequence_its_own_logits(lm):
  ids, mask = lm.tokenize(SENTENCES[:3])
  right = lm.logits(ids, mask)
  left_ids, left_mask = np.full_like(ids, lm.pad_id), np.zeros_like(mask)
  for i in range(3):
    n = mask[i].sum()
    left_ids[i, ids.shape[1] - n:], left_mask[i, ids.shape[1] - n:] = ids[i, :n], True
  left = lm.logits(left_ids, left_mask)
  for i in range(3):
    n = mask[i].sum()
    alone = lm.logits(ids[i:i + 1, :n], mask[i:i + 1, :n])[0]
    np.testing.assert_allclose(right[i, :n], alone, atol=1e-5)
    np.testing.assert_allclose(left[i, ids.shape[1] - n:], alone, atol=1e-5)
  # Generation reads left- and right-padded batches alike, each row as if alone.
  a = lm.generate(ids, mask, max_new_tokens=5)
  b = lm.generate(left_ids, left_mask, max_new_tokens=5)
  np.testing.assert_array_equal(a, b)
  for i in range(3):
    n = mask[i].sum()
    np.testing.assert_array_equal(a[i], lm.generate(ids[i:i + 1, :n], mask[i:i + 1, :n],
                                                    max_new_tokens=5)[0])


def test_a_prompt_of_length_zero_is_bitwise_the_plain_model(lm):
  ids, mask = lm.tokenize(SENTENCES[:2])
  empty = {"tokens": jnp.zeros((0, lm.width)),
           "prefix": jnp.zeros((lm.config.num_hidden_layers, 2, 0, lm.config.kv_dim))}
  np.testing.assert_array_equal(lm.logits(ids, mask, prompt=empty), lm.logits(ids, mask))
  np.testing.assert_array_equal(lm.generate(ids, mask, max_new_tokens=4, prompt=empty),
                                lm.generate(ids, mask, max_new_tokens=4))


def test_a_late_prompt_enters_at_its_layer_and_leaves_the_layers_below_to_the_text(tiny):
  path, cfg, tensors = tiny["llama"]
  m = mj.pretrained.load(path)
  ids, mask = m.tokenize(SENTENCES[:3])
  late = jnp.asarray(0.5 * np.random.default_rng(4).standard_normal((2, m.width)), jnp.float32)
  logits = m.logits(ids, mask, prompt={"tokens": late}, entry_layer=1)
  for i in range(3):
    n = int(mask[i].sum())
    want = np_llama_logits(cfg, tensors, ids[i, :n], late=(1, late, m.insert_at))
    np.testing.assert_allclose(logits[i, :n + 2], want, atol=1e-4, rtol=1e-4)
  # A late prompt of length 0 is bitwise the plain model, and the layers below it are the
  # plain model's: what lower_fn returns is the stream the plain model has after layer 0.
  empty = {"tokens": jnp.zeros((0, m.width))}
  np.testing.assert_array_equal(m.logits(ids, mask, prompt=empty, entry_layer=1),
                                m.logits(ids, mask))
  _, layers = m.hidden_states(ids, mask, return_layers=True)
  lower = m.lower_fn(1)(m.params, jnp.asarray(ids), jnp.asarray(mask))
  np.testing.assert_allclose(lower["h"], layers[0], atol=1e-6)
  with pytest.raises(ValueError, match=r"entry_layer must be an integer in \[0, 2\)"):
    m.logits(ids, mask, entry_layer=2)


def test_late_prompt_scores_read_the_lower_layers_computed_once(lm):
  labels = ["balance", "alarm clock"]
  ids, mask = (jnp.asarray(a) for a in lm.tokenize(SENTENCES[:3]))
  label_ids, label_mask = (jnp.asarray(a) for a in lm.label_ids(labels))
  soft = {"tokens": 0.3 * jax.random.normal(jax.random.key(5), (2, lm.width))}
  f = jax.jit(lm.scores_fn(entry_layer=1))
  lower = jax.jit(lm.lower_fn(1))(lm.params, ids, mask)
  got = f(lm.params, ids, mask, label_ids, label_mask, soft)
  np.testing.assert_allclose(f(lm.params, ids, mask, label_ids, label_mask, soft, lower), got,
                             atol=1e-6)
  np.testing.assert_allclose(lm.score(SENTENCES[:3], labels, prompt=soft, entry_layer=1), got,
                             atol=1e-5)
  # Each score is what one forward of context + label computes with the same late prompt.
  for i in range(3):
    ctx = lm.encode(SENTENCES[i])
    for k in range(2):
      lab = list(np.asarray(label_ids[k, :int(label_mask[k].sum())]))
      seq = np.asarray([ctx + lab], np.int32)
      logp = jax.nn.log_softmax(lm.logits(seq, np.ones_like(seq, bool), prompt=soft,
                                          entry_layer=1)[0], -1)
      want = sum(float(logp[len(ctx) + 1 + j, t]) for j, t in enumerate(lab))
      np.testing.assert_allclose(got[i, k], want, atol=1e-4)
  with pytest.raises(ValueError, match="precomputed lower states"):
    f(lm.params, ids[:2], mask[:2], label_ids, label_mask, soft, lower)


def test_generated_and_instance_ensembled_prompts_steer_the_decoder(lm):
  ids, mask = (jnp.asarray(a) for a in lm.tokenize(SENTENCES[:4]))
  label_ids, label_mask = (jnp.asarray(a) for a in lm.label_ids(["balance", "alarm"]))
  y = jnp.asarray([0, 1, 0, 1])
  f, embed = jax.jit(lm.scores_fn(normalize="mean")), lm.embed_fn()
  rep = embed(lm.params, ids, mask)                                              # [n, d]
  # The representation is the mean word embedding over each text's real tokens.
  table = lm.token_embeddings()
  np.testing.assert_allclose(rep[1], table[ids[1][mask[1]]].mean(0), atol=1e-6)
  for kind in (mj.prompts.generated(3, lm.width, repr_dim=lm.width, hidden=16),
               mj.prompts.ensembled(4, 3, lm.width, key_dim=8, instance=True)):
    shared, task = kind.init(jax.random.key(6))

    def loss(shared, task):
      # The generator reads the support summary; the ensemble reads each instance.
      tokens = kind.apply(shared, task, task_repr=rep if kind.weights else rep.mean(0))
      return mj.cross_entropy(f(lm.params, ids, mask, label_ids, label_mask, tokens), y)

    tokens = kind.apply(shared, task, task_repr=rep if kind.weights else rep.mean(0))["tokens"]
    assert tokens.shape == ((4, 3, lm.width) if kind.weights else (3, lm.width))
    if kind.weights:  # one prompt per example: row i alone with its own mixed prompt
      alone = f(lm.params, ids[1:2], mask[1:2], label_ids, label_mask, {"tokens": tokens[1]})
      np.testing.assert_allclose(
          f(lm.params, ids, mask, label_ids, label_mask, {"tokens": tokens})[1], alone[0],
          atol=1e-5)
    grads = jax.jit(jax.grad(loss))(shared, task)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


def test_prompt_tokens_made_of_word_embeddings_compute_the_text_with_those_words(lm):
  # After <s>: the soft prompt takes positions 1..P like inserted words.
  words = lm.encode(" play some", add_special_tokens=False)
  ids, mask = lm.tokenize([SENTENCES[0]])
  soft = lm.logits(ids, mask, prompt={"tokens": lm.token_embeddings()[jnp.asarray(words)]})
  spliced = np.asarray([[ids[0, 0]] + words + list(ids[0, 1:])], np.int32)
  np.testing.assert_allclose(soft, lm.logits(spliced, np.ones_like(spliced, bool)), atol=1e-5)


def test_one_prompt_per_example_in_a_mixed_task_batch(lm):
  rng = np.random.default_rng(2)
  ids, mask = lm.tokenize(SENTENCES[:2])
  per = jnp.asarray(0.3 * rng.standard_normal((2, 3, lm.width)), jnp.float32)
  both = lm.logits(ids, mask, prompt={"tokens": per})
  for i in range(2):
    one = lm.logits(ids[i:i + 1], mask[i:i + 1], prompt={"tokens": per[i]})
    np.testing.assert_allclose(both[i], one[0], atol=1e-6)


def test_label_scores_equal_one_forward_of_context_and_label(lm):
  contexts, labels = SENTENCES[:3], ["balance", "alarm clock", "weather"]
  got = lm.score(contexts, labels)
  mean = lm.score(contexts, labels, normalize="mean")
  label_ids, label_mask = lm.label_ids(labels)
  for i, c in enumerate(contexts):
    ctx = lm.encode(c)
    for k in range(len(labels)):
      lab = list(label_ids[k, :label_mask[k].sum()])
      seq = np.asarray([ctx + lab], np.int32)
      logp = jax.nn.log_softmax(lm.logits(seq, np.ones_like(seq, bool))[0], -1)
      want = sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(lab))
      np.testing.assert_allclose(got[i, k], want, atol=1e-4)
      np.testing.assert_allclose(mean[i, k], want / len(lab), atol=1e-4)


def test_the_gradient_of_a_label_score_in_the_soft_prompt_matches_finite_differences(lm):
  f = lm.scores_fn()
  ids, mask = lm.tokenize(SENTENCES[:2])
  label_ids, label_mask = lm.label_ids(["balance", "alarm"])
  with jax.enable_x64(True):
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), lm.params)
    rng = np.random.default_rng(3)
    soft = jnp.asarray(0.3 * rng.standard_normal((2, lm.width)))
    direction = jnp.asarray(rng.standard_normal((2, lm.width)))
    loss = jax.jit(lambda s: f(params, ids, mask, label_ids, label_mask, {"tokens": s})[:, 0].sum())
    analytic = jnp.vdot(jax.jit(jax.grad(loss))(soft), direction)
    eps = 1e-5
    numeric = (loss(soft + eps * direction) - loss(soft - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-6)


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "reptile"])
def test_a_soft_prompt_meta_learns_through_a_tiny_decoder(lm, algorithm):
  # Tasks: two intents per episode, scored by label log-likelihood with a soft prompt.
  f = lm.scores_fn(normalize="mean")
  labels = ["balance", "alarm"]
  label_ids, label_mask = (jnp.asarray(a) for a in lm.label_ids(labels))
  ids, mask = lm.tokenize(SENTENCES[:4], 12)
  x = {"ids": jnp.asarray(ids), "mask": jnp.asarray(mask)}
  y = jnp.asarray([0, 1, 0, 1])

  def loss_fn(params, batch):
    scores = f(params[mj.SHARED], batch.x["ids"], batch.x["mask"], label_ids, label_mask,
               {"tokens": params[mj.PROMPT]})
    return mj.cross_entropy(scores, batch.y)

  task = mj.Episode(mj.Batch(jax.tree.map(lambda a: a[:2], x), y[:2]),
                    mj.Batch(jax.tree.map(lambda a: a[2:], x), y[2:]))
  tasks = jax.tree.map(lambda a: jnp.stack([a, a]), task)
  params = {mj.SHARED: lm.params, mj.PROMPT: 0.1 * jax.random.normal(jax.random.key(0),
                                                                      (3, lm.width))}
  algo = mj.get_algorithm(algorithm, fast=(mj.PROMPT,), outer=(mj.PROMPT,))
  learner = mj.meta_learner(loss_fn, optax.adam(1e-2), algorithm=algo, inner_steps=1,
                            inner_lr=0.5, meta_batch_size=2, donate=False)
  state = learner.init(params, key=jax.random.key(1))
  before = np.asarray(state.params[mj.PROMPT])
  for _ in range(2):
    state, metrics = learner.step(state, tasks)
  assert int(state.step) == 2 and np.isfinite(float(metrics["loss"]))
  assert not np.allclose(np.asarray(state.params[mj.PROMPT]), before)  # the prompt learned
  np.testing.assert_array_equal(jax.tree.leaves(state.params[mj.SHARED])[0],
                                jax.tree.leaves(lm.params)[0])         # the model did not


def test_sampling_settings_stop_tokens_and_seeds(lm):
  ids, mask = lm.tokenize(SENTENCES[:2])
  greedy = lm.generate(ids, mask, max_new_tokens=6)
  # top-k 1 and a vanishing top-p leave only the argmax, whatever the temperature.
  np.testing.assert_array_equal(lm.generate(ids, mask, max_new_tokens=6, temperature=2.0,
                                            top_k=1), greedy)
  np.testing.assert_array_equal(lm.generate(ids, mask, max_new_tokens=6, temperature=2.0,
                                            top_p=1e-6), greedy)
  a = lm.generate(ids, mask, max_new_tokens=6, temperature=1.0, seed=5)
  np.testing.assert_array_equal(a, lm.generate(ids, mask, max_new_tokens=6, temperature=1.0,
                                               seed=5))
  stop = int(greedy[0, 1])
  stopped = lm.generate(ids, mask, max_new_tokens=6, stop_tokens=(stop,))
  first = list(greedy[0]).index(stop)
  np.testing.assert_array_equal(stopped[0, :first + 1], greedy[0, :first + 1])
  assert (stopped[0, first + 1:] == lm.pad_id).all()
  probs = jax.nn.softmax(gen._filter_logits(jnp.asarray([[3.0, 2.0, 1.0, 0.0]]), 1.0, 0, 0.7))
  np.testing.assert_allclose(probs[0, 2:], 0.0)  # 0.665 < 0.7: the two most likely stay
  assert float(probs[0, 1]) > 0


def test_bad_input_is_a_clear_error(lm, tmp_path):
  ids, mask = lm.tokenize(SENTENCES[:2])
  with pytest.raises(ValueError, match=r"a prefix must be \[2, 2, P, 16\]"):
    lm.logits(ids, mask, prompt={"prefix": jnp.zeros((2, 2, 3, 8))})
  with pytest.raises(ValueError, match="no real token"):
    lm.generate(ids, np.zeros_like(mask), max_new_tokens=2)
  with pytest.raises(ValueError, match="max_new_tokens must be a positive integer"):
    lm.generate(ids, mask, max_new_tokens=0)
  with pytest.raises(ValueError, match="exceed the checkpoint's 96"):
    lm.generate(ids, mask, max_new_tokens=95)
  with pytest.raises(ValueError, match="prompt must be a dict with 'tokens' and/or 'prefix'"):
    lm.logits(ids, mask, prompt={"soft": 1})
  with pytest.raises(ValueError, match="normalize must be one of"):
    lm.score(SENTENCES[:1], ["a"], normalize="max")
  with pytest.raises(ValueError, match=r"token ids must be in \[0, 320\)"):
    lm.logits(np.full_like(ids, 999), mask)
  cfg = llama_config(rope_parameters={"rope_theta": 1e4, "rope_type": "yarn"})
  path = write_checkpoint(str(tmp_path / "yarn"), cfg, llama_tensors(llama_config()))
  with pytest.raises(ValueError, match="RoPE scaling 'yarn' is not supported"):
    mj.pretrained.load(path)
  t = llama_tensors(llama_config())
  del t["model.layers.1.mlp.up_proj.weight"]
  with pytest.raises(ValueError, match="missing tensor 'model.layers.1.mlp.up_proj.weight'"):
    mj.pretrained.load(write_checkpoint(str(tmp_path / "missing"), llama_config(), t))


def test_bfloat16_weights_on_request(tiny):
  m32 = mj.pretrained.load(tiny["llama"][0])
  m16 = mj.pretrained.load(tiny["llama"][0], dtype=jnp.bfloat16)
  assert jax.tree.leaves(m16.params)[0].dtype == jnp.bfloat16
  ids, mask = m32.tokenize(SENTENCES[:2])
  a, b = m32.logits(ids, mask), m16.logits(ids, mask)
  assert b.dtype == np.float32 and np.isfinite(b).all()
  assert np.abs(a - b).max() < 0.1 * np.abs(a).max()


# --- GGUF ---------------------------------------------------------------------------------------

def write_gguf(path, cfg, tensors, tokenizer_json):
  """The Llama checkpoint as llama.cpp's converter writes it: GGUF names, q/k rows permuted
  for interleaved RoPE, the embedding table quantized to Q8_0, the tokenizer's vocab/merges."""
  import gguf
  w = gguf.GGUFWriter(path, "llama")
  w.add_block_count(cfg["num_hidden_layers"])
  w.add_context_length(cfg["max_position_embeddings"])
  w.add_embedding_length(cfg["hidden_size"])
  w.add_feed_forward_length(cfg["intermediate_size"])
  w.add_head_count(cfg["num_attention_heads"])
  w.add_head_count_kv(cfg["num_key_value_heads"])
  w.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
  w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
  w.add_vocab_size(cfg["vocab_size"])
  tok = json.load(open(tokenizer_json))
  vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
  tokens = [t for t, _ in vocab] + [f"<unused{i}>" for i in range(cfg["vocab_size"] - len(vocab))]
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre("default")
  w.add_token_list(tokens)
  w.add_token_types([3 if t in ("<s>", "</s>", "<pad>") else 1 for t in tokens])
  w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]])
  w.add_bos_token_id(0)
  w.add_eos_token_id(1)
  w.add_pad_token_id(2)
  w.add_add_bos_token(True)

  def permute(m, heads):  # llama.cpp's LlamaModel.permute
    return m.reshape(heads, 2, m.shape[0] // heads // 2, *m.shape[1:]).swapaxes(1, 2).reshape(m.shape)

  q8 = gguf.quants.quantize(tensors["model.embed_tokens.weight"], gguf.GGMLQuantizationType.Q8_0)
  w.add_tensor("token_embd.weight", q8, raw_shape=q8.shape,
               raw_dtype=gguf.GGMLQuantizationType.Q8_0)
  w.add_tensor("output_norm.weight", tensors["model.norm.weight"])
  w.add_tensor("output.weight", tensors["lm_head.weight"])
  names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
           "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
           "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
           "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
  for i in range(cfg["num_hidden_layers"]):
    for hf, g in names.items():
      a = tensors[f"model.layers.{i}.{hf}.weight"]
      if g == "attn_q":
        a = permute(a, cfg["num_attention_heads"])
      elif g == "attn_k":
        a = permute(a, cfg["num_key_value_heads"])
      w.add_tensor(f"blk.{i}.{g}.weight", a)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  deq = gguf.quants.dequantize(q8, gguf.GGMLQuantizationType.Q8_0)
  return np.asarray(deq, np.float32).reshape(tensors["model.embed_tokens.weight"].shape)


def test_a_gguf_file_loads_to_the_same_model_as_its_safetensors(tiny, tmp_path):
  path, cfg, tensors = tiny["llama"]
  file = str(tmp_path / "gguf" / "tiny.gguf")
  os.makedirs(os.path.dirname(file))
  embed = write_gguf(file, cfg, tensors, os.path.join(path, "tokenizer.json"))
  g = mj.pretrained.load(file)  # no tokenizer.json beside it: built from the file's vocab
  ids, mask = g.tokenize(SENTENCES)
  ref = mj.pretrained.load(path)
  ref_ids, ref_mask = ref.tokenize(SENTENCES)
  np.testing.assert_array_equal(ids, ref_ids)
  np.testing.assert_array_equal(mask, ref_mask)
  assert g.insert_at == 1
  # Q8_0 embeddings: the same model as the safetensors one with those dequantized values.
  np.testing.assert_array_equal(np.asarray(g.params["embed"]), embed)
  ref_params = {**ref.params, "embed": jnp.asarray(embed)}
  np.testing.assert_allclose(g.logits(ids, mask), ref._replace(params=ref_params).logits(ids, mask),
                             atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(g.generate(ids, mask, max_new_tokens=4),
                                ref._replace(params=ref_params).generate(ids, mask,
                                                                         max_new_tokens=4))


def test_unpermute_inverts_llama_cpp_permutation():
  w = np.arange(4 * 8 * 3, dtype=np.float32).reshape(4 * 8, 3)   # 4 heads of 8 rows
  permuted = w.reshape(4, 2, 4, 3).swapaxes(1, 2).reshape(w.shape)
  np.testing.assert_array_equal(llama.unpermute_rows(permuted, 4), w)


def test_unsupported_gguf_architectures_are_refused(tmp_path):
  import gguf
  w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "mamba")
  w.add_block_count(1)
  w.add_tensor("x", np.zeros(4, np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(ValueError, match="GGUF architecture 'mamba'.*not supported"):
    mj.pretrained.load(tmp_path / "m.gguf")


# --- Against transformers' references (../shared/data) ------------------------------------------

def _ref(name):
  path = os.path.join(DATA, "tiny-lm", name)
  if not os.path.isdir(path):
    pytest.skip(f"no {path}")
  with open(path + "-reference.json") as f:
    js = json.load(f)
  return path, np.load(path + "-reference.npz", allow_pickle=False), js


def _close(a, b, atol, rtol):
  bad = np.abs(a - b) > atol + rtol * np.abs(b)
  assert not bad.any(), f"{bad.sum()} of {bad.size} differ; max |a-b| {np.abs(a - b).max():.3g}"


@pytest.mark.parametrize("name", ["llama", "qwen2", "gpt2"])
def test_tiny_decoders_match_transformers(name):
  path, ref, js = _ref(name)
  m = mj.pretrained.load(path)
  ids, mask = m.tokenize([t["text"] for t in js["texts"]], ref["input_ids"].shape[1])
  np.testing.assert_array_equal(ids, ref["input_ids"])
  np.testing.assert_array_equal(mask, ref["attention_mask"].astype(bool))
  h, layers = m.hidden_states(ids, mask, return_layers=True)
  _close(m.logits(ids, mask)[mask], ref["logits"][mask], 1e-5, 1e-4)
  _close(h[mask], ref["hidden_states"][-1][mask], 1e-5, 1e-4)
  _close(layers[-1][mask], ref["last_layer_prenorm"][mask], 1e-5, 1e-4)
  for layer in range(1, m.config.num_hidden_layers):
    _close(layers[layer - 1][mask], ref["hidden_states"][layer][mask], 1e-5, 1e-4)
  for k, row in enumerate(ref["greedy_prompt_ids"]):
    row = row[row >= 0][None]
    new, step = m.generate(row, np.ones_like(row, bool), max_new_tokens=12, return_logits=True)
    np.testing.assert_array_equal(new[0], ref["greedy_new_ids"][k])
    _close(step[0], ref["greedy_step_logits"][k], 1e-5, 1e-4)


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_tiny_masked_lms_match_transformers(name):
  path, ref, js = _ref(name)
  m = mj.pretrained.load(path)
  texts = [t["text"] if t.get("text") is not None else tuple(t["pair"]) for t in js["texts"]]
  ids, mask, types = m.tokenize(texts, ref["input_ids"].shape[1], token_types=True)
  np.testing.assert_array_equal(ids, ref["input_ids"])
  np.testing.assert_array_equal(types, ref["token_type_ids"])
  _close(m.logits(ids, mask, token_types=types)[mask], ref["logits"][mask], 1e-5, 1e-4)
  masked, _ = m.tokenize(js["masked_texts"], ref["masked_input_ids"].shape[1])
  np.testing.assert_array_equal(masked, ref["masked_input_ids"])
  rows, cols = ref["mask_positions"].T
  assert (masked[rows, cols] == m.mask_id).all()
  _close(m.logits(masked)[rows, cols], ref["mask_logits"], 1e-5, 1e-4)


@pytest.fixture(scope="module")
def smol():
  path = os.path.join(DATA, "SmolLM2-135M-Instruct-Q4_1", "SmolLM2-135M-Instruct.Q4_1.gguf")
  if not os.path.isfile(path):
    pytest.skip(f"no {path}")
  with open(os.path.join(DATA, "smollm2-reference.json")) as f:
    js = json.load(f)
  return mj.pretrained.load(path), np.load(os.path.join(DATA, "smollm2-reference.npz")), js


def test_smollm2_from_its_gguf_matches_transformers(smol):
  m, ref, js = smol
  ids, mask = m.tokenize([t["text"] for t in js["texts"]], 40)
  np.testing.assert_array_equal(ids, ref["input_ids"])
  keep = mask.any(axis=1)  # the empty string has no position to predict from
  lg = m.logits(ids[keep], mask[keep])
  h = m.hidden_states(ids[keep], mask[keep])
  mk = mask[keep]
  _close(h[mk], ref["final_hidden"][keep][mk], 2e-3, 1e-3)
  last = lg[np.arange(keep.sum()), mk.sum(1) - 1]
  _close(last, ref["logits_last"][keep], 2e-3, 1e-4)
  index = {t["key"]: i for i, t in enumerate(js["texts"])} if "key" in js["texts"][0] else None
  for key in ("clinc_short", "plain_prompt", "clinc_medium", "clinc_curly_apostrophe"):
    i = index[key] if index else None
    if i is None:
      continue
    n = int(mask[i].sum())
    _close(m.logits(ids[i:i + 1, :n], mask[i:i + 1, :n])[0], ref[f"logits_full_{key}"], 2e-3,
           1e-4)
  lengths = ref["lengths"]
  rows = [ref["input_ids"][i, :lengths[i]] for i in ref["greedy_text_index"]]
  width = max(map(len, rows))
  g_ids = np.full((len(rows), width), m.pad_id, np.int32)
  g_mask = np.zeros_like(g_ids, bool)
  for i, r in enumerate(rows):
    g_ids[i, :len(r)], g_mask[i, :len(r)] = r, True
  new = m.generate(g_ids, g_mask, max_new_tokens=24)
  for k, margin in enumerate(ref["greedy_margin"]):
    upto = int(np.argmax(margin < 1e-3)) if (margin < 1e-3).any() else 24
    np.testing.assert_array_equal(new[k, :upto], ref["greedy_new_ids"][k, :upto])
  sc = js["scoring"]
  scores = m.score(sc["prompts"], sc["labels"], label_prefix=sc["label_prefix"])
  _close(scores, ref["score_sum_logprob"], 2e-3, 0.0)
  np.testing.assert_array_equal(scores.argmax(1), ref["score_sum_logprob"].argmax(1))


def test_smollm2_soft_prompts_and_prefixes_match_transformers(smol):
  m, ref, _ = smol
  soft = {"tokens": ref["soft_prompt"]}
  ids = ref["soft_start_input_ids"][None]
  first = m._replace(insert_at=0)   # this text has no BOS: the soft vectors come first
  _close(first.hidden_states(ids, np.ones_like(ids, bool), prompt=soft)[0],
         ref["soft_start_hidden"], 2e-3, 1e-3)
  _close(first.logits(ids, np.ones_like(ids, bool), prompt=soft)[0], ref["soft_start_logits"],
         2e-3, 1e-4)
  ids = ref["soft_after_bos_input_ids"][None]
  after = m._replace(insert_at=1)   # after its BOS <|im_start|>
  _close(after.hidden_states(ids, np.ones_like(ids, bool), prompt=soft)[0],
         ref["soft_after_bos_hidden"], 2e-3, 1e-3)
  _close(after.logits(ids, np.ones_like(ids, bool), prompt=soft)[0, -1],
         ref["soft_after_bos_logits_last"], 2e-3, 1e-4)
  # [layer, kv head, P, hd] keys and values -> [layer, 2, P, kv heads x hd]
  kv = np.stack([ref["prefix_keys"], ref["prefix_values"]], 1)
  layers, _, heads, p, hd = kv.shape
  prefix = {"prefix": kv.transpose(0, 1, 3, 2, 4).reshape(layers, 2, p, heads * hd)}
  ids = ref["prefix_input_ids"][None]
  for pp, key in (("after", "default_positions"), ("from_0", "positions_from_0")):
    _close(m.hidden_states(ids, np.ones_like(ids, bool), prompt=prefix, prefix_positions=pp)[0],
           ref[f"prefix_hidden_{key}"], 2e-3, 1e-3)
    _close(m.logits(ids, np.ones_like(ids, bool), prompt=prefix, prefix_positions=pp)[0, -1],
           ref[f"prefix_logits_last_{key}"], 2e-3, 1e-4)


def test_in_context_demonstrations_and_a_soft_prompt_are_one_call(lm):
  support = [("what is my balance", "balance"), ("set an alarm for 7 am", "alarm")]
  contexts = mj.pretrained.in_context(["wake me up at six"], support, template="{text} =>{label}")
  assert contexts == ["what is my balance => balance\n\nset an alarm for 7 am => alarm\n\n"
                      "wake me up at six =>"]
  soft = {"tokens": 0.3 * jax.random.normal(jax.random.key(0), (2, lm.width))}
  icl = lm.score(contexts, ["balance", "alarm"])
  both = lm.score(contexts, ["balance", "alarm"], prompt=soft)
  assert icl.shape == both.shape == (1, 2) and not np.allclose(icl, both)
  with pytest.raises(ValueError, match="template must contain {label}"):
    mj.pretrained.in_context(["q"], support, template="{text}")


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_a_shared_context_runs_once_and_scores_as_each_joined_context(tiny, name):
  # In-context demonstrations shared by an episode's queries: the shared part runs once and
  # each query continues its cache; the scores are those of each whole context.
  lm = mj.pretrained.load(tiny[name][0])
  shared_text = "wake me: alarm\n\njazz: music\n\n"
  queries = [f"{s}:" for s in ("my balance", "an alarm", "play it")]
  (ids0, mask0), ids, mask = lm.shared_context(shared_text, queries)
  real0 = list(ids0[mask0])
  joined = [real0 + list(row[m]) for row, m in zip(ids, mask)]
  width = max(map(len, joined))
  j_ids = np.zeros((3, width), np.int32)
  j_mask = np.zeros((3, width), bool)
  for i, row in enumerate(joined):
    j_ids[i, :len(row)], j_mask[i, :len(row)] = row, True
  label_ids, label_mask = lm.label_ids(["alarm", "music", "weather forecast"])
  rng = np.random.default_rng(4)
  soft = jnp.asarray(0.3 * rng.standard_normal((2, lm.width)), jnp.float32)
  depth = lm.config.num_hidden_layers
  for entry_layer, prompt in ((0, None), (0, {"tokens": soft}), (1, {"tokens": soft}),
                              (0, {"prefix": jnp.asarray(0.3 * rng.standard_normal(
                                  (depth, 2, 2, lm.config.kv_dim)), jnp.float32)})):
    f = jax.jit(lm.scores_fn(normalize="mean", entry_layer=entry_layer))
    want = f(lm.params, j_ids, j_mask, label_ids, label_mask, prompt)
    got = f(lm.params, ids, mask, label_ids, label_mask, prompt, None, (ids0, mask0))
    np.testing.assert_allclose(got, want, atol=2e-5)
  # The string interface, and a padded shared part (its pad slots are overwritten).
  np.testing.assert_allclose(lm.score(queries, ["alarm", "music", "weather forecast"],
                                      normalize="mean", shared_context=shared_text),
                             f(lm.params, j_ids, j_mask, label_ids, label_mask), atol=2e-5)
  with pytest.raises(ValueError, match="one prompt"):
    f(lm.params, ids, mask, label_ids, label_mask,
      {"tokens": jnp.zeros((3, 2, lm.width))}, None, (ids0, mask0))
