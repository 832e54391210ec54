"""Pretrained text encoders from local Hugging Face checkpoint directories, without PyTorch.

`load(path)` reads `config.json`, the weights (`model.safetensors`, or shards listed in
`model.safetensors.index.json`) with the safetensors package's numpy API, and the tokenizer
(`tokenizer.json`, else `vocab.txt`) with the tokenizers package, and returns the encoder as a
Net that fits mj.compose (its init returns the loaded weights, which become the "shared" role)
together with the tokenizer. Supported: model_type "bert" (BERT, MiniLM and the
sentence-embedding models built on them). Nothing is ever unpickled, so `pytorch_model.bin`
is refused. Every check runs on the host before anything compiles.
"""

import json
import os
import warnings
from typing import Any, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from mtpjax.pretrained import _bert as bert
from mtpjax.pretrained import _gguf as gguf_file
from mtpjax.pretrained import _gpt2 as gpt2
from mtpjax.pretrained import _language_model as language_model
from mtpjax.pretrained import _llama as llama
from mtpjax.pretrained import _vision_model as vision_model
from mtpjax.nn import _compose as nets

DECODER_FAMILIES = {**{t: llama for t in llama.MODEL_TYPES}, **{t: gpt2 for t in gpt2.MODEL_TYPES}}
ENCODER_MODEL_TYPES = ("bert", "roberta")
SUPPORTED_MODEL_TYPES = (ENCODER_MODEL_TYPES + tuple(DECODER_FAMILIES)
                         + vision_model.HF_VISION_TYPES)
# encode's default batch size; each batch is padded to the bucket of its longest text (see
# _bucket): a few compiled shapes, and most batches far shorter than max_len.
ENCODE_BATCH = 64


def _bucket(longest: int, max_len: int) -> int:
  """The padded length of a batch: a multiple of 4 up to 32, of 16 up to 128, then of 64."""
  step = 4 if longest <= 32 else 16 if longest <= 128 else 64
  return min(max_len, -(-longest // step) * step)


class Tokenizer:
  """A `tokenizers` tokenizer that returns fixed-length numpy arrays.

  tokenizer(texts, max_len) -> (ids [n, max_len] int32, mask [n, max_len] bool): [CLS] text
  [SEP], truncated to max_len, padded with `pad_id`. Any Unicode and the empty string work.
  """

  def __init__(self, tok, *, pad_id: int, pad_token: str, source: str):
    self._tok = tok
    self.pad_id = int(pad_id)
    self.pad_token = pad_token
    self.source = source

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  def token_to_id(self, token: str) -> Optional[int]:
    return self._tok.token_to_id(token)

  def __call__(self, texts: Sequence[str], max_len: int, *, token_types: bool = False):
    if isinstance(texts, str):
      raise TypeError("tokenizer: pass a list of texts, not a single string")
    texts = [tuple(t) if isinstance(t, list) else t for t in texts]
    is_text = lambda t: isinstance(t, str) or (
        isinstance(t, tuple) and len(t) == 2 and all(isinstance(u, str) for u in t))
    bad = [i for i, t in enumerate(texts) if not is_text(t)]
    if bad:
      raise TypeError(f"tokenizer: texts must be strings; item {bad[0]} is "
                      f"{type(texts[bad[0]]).__name__}")
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2:
      raise ValueError(f"tokenizer: max_len must be an integer >= 2 ([CLS] and [SEP]), got "
                       f"{max_len!r}")
    tok = self._tok
    tok.enable_truncation(max_len)
    tok.enable_padding(pad_id=self.pad_id, pad_token=self.pad_token, length=max_len)
    enc = tok.encode_batch(texts)
    ids = np.array([e.ids for e in enc], np.int32).reshape(len(texts), max_len)
    mask = np.array([e.attention_mask for e in enc], bool).reshape(len(texts), max_len)
    if token_types:
      types = np.array([e.type_ids for e in enc], np.int32).reshape(len(texts), max_len)
      return ids, mask, types
    return ids, mask


class Pretrained(NamedTuple):
  """A loaded checkpoint: the encoder Net, its weights, the tokenizer and the settings."""

  encoder: nets.Net            # init(key, ids) -> weights; apply(weights, ids, context) -> [n, d]
  params: Any                  # the weights (the "shared" role)
  tokenizer: Tokenizer
  config: bert.BertConfig
  pooling: str                 # "mean" or "cls", from the directory (1_Pooling) by default
  normalize: bool              # L2 normalisation (a 2_Normalize module)
  max_len: int                 # the directory's max_seq_length, capped by the position table
  path: str
  # The masked-LM head (BertForMaskedLM, RobertaForMaskedLM checkpoints), else None.
  mlm: Any = None

  def net(self, *, entry_layer: int = 0, pooling: Optional[str] = None,
          normalize: Optional[bool] = None) -> nets.Net:
    """The same encoder with prompts entering at `entry_layer` (and other pooling)."""
    return encoder(self.config, weights=self.params, entry_layer=entry_layer,
                   pooling=self.pooling if pooling is None else pooling,
                   normalize=self.normalize if normalize is None else normalize)

  def tokenize(self, texts: Sequence[str], max_len: Optional[int] = None, *,
               token_types: bool = False):
    """(ids, mask) numpy arrays [n, max_len] (default: the directory's max_seq_length); a
    text may be a pair (a, b). With token_types also the segment ids [n, max_len]."""
    max_len = self.max_len if max_len is None else max_len
    _check_max_len(self.config, max_len)
    return self.tokenizer(texts, max_len, token_types=token_types)

  @property
  def mask_id(self) -> Optional[int]:
    """The id of the mask token ([MASK] or <mask>), if the tokenizer has one."""
    for t in ("[MASK]", "<mask>"):
      if self.tokenizer.token_to_id(t) is not None:
        return self.tokenizer.token_to_id(t)
    return None

  def logits(self, ids, mask=None, *, token_types=None, prompt=None):
    """The masked-LM head's logits [n, T, V] float32 (numpy) at every position.

    mask, if given, must mark exactly the non-padding ids (BERT reads padding from the ids).
    prompt: {"tokens": [P, d]} inserted after [CLS] (their positions are dropped from the
    output) and/or {"prefix": [L, 2, P, d]}.
    """
    if self.mlm is None:
      raise ValueError(f"logits: {self.path} has no masked-LM head (a sentence encoder); load "
                       f"a *ForMaskedLM checkpoint")
    ids = np.asarray(ids)
    if mask is not None and not (np.asarray(mask, bool) == (ids != self.tokenizer.pad_id)).all():
      raise ValueError("logits: the mask must be ids != pad id (right padding)")
    bert.check_token_ids(ids, self.config.vocab_size)
    types = None if token_types is None else jnp.asarray(token_types, jnp.int32)
    fn = _jitted_mlm(self.config)
    return np.asarray(fn(self.params, self.mlm, jnp.asarray(ids, jnp.int32), types,
                         prompt or {}))


def encoder(config: bert.BertConfig, *, weights: Any = None, entry_layer: int = 0,
            pooling: str = "mean", normalize: bool = False) -> nets.Net:
  """BERT as a Net: apply(params, x, context=None) -> sentence embeddings [n, d].

  Args:
    config: the architecture.
    weights: loaded parameters; init then returns them (as jax arrays) whatever its key. None:
      init draws random ones (BERT's initialisation), e.g. for tests.
    entry_layer: the layer prompt tokens enter at (0: the input; see mtpjax._src.bert).
    pooling: "mean" over real tokens or "cls"; "none" returns hidden states [n, T, d].
    normalize: L2-normalise the pooled embedding.

  Returns:
    Net(init, apply, out_dim, embed, prepare). prepare(params, ids) caches the text's hidden
    states below the entry layer (identity at entry_layer 0); apply accepts ids or that
    cache. embed(params, x) is a prompt-free instance representation [n, d]: the mean over
    real tokens of the hidden states at the entry layer (word embeddings at layer 0).

  >>> cfg = bert.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2,
  ...                       num_attention_heads=2, intermediate_size=16)
  >>> net = encoder(cfg)
  >>> ids = jnp.array([[2, 5, 3, 0]])
  >>> net.apply(net.init(jax.random.key(0), ids), ids).shape
  (1, 8)
  """
  if pooling not in bert.POOLINGS:
    raise ValueError(f"encoder: pooling must be one of {bert.POOLINGS}, got {pooling!r}")
  depth = config.num_hidden_layers
  if isinstance(entry_layer, bool) or not isinstance(entry_layer, int) or not (
      0 <= entry_layer < depth):
    raise ValueError(f"encoder: entry_layer must be an integer in [0, {depth}) for a "
                     f"{depth}-layer encoder, got {entry_layer!r}")
  if weights is not None:
    bert.check_params(config, weights, "encoder weights")
    weights = jax.tree.map(jnp.asarray, weights)

  def _ids(x):
    ids = x["ids"] if isinstance(x, dict) else x
    if not jnp.issubdtype(ids.dtype, jnp.integer) or ids.ndim != 2:
      raise ValueError(f"encoder: token ids must be an integer array [n, T], got {ids.shape} "
                       f"{ids.dtype}")
    _check_max_len(config, ids.shape[1])
    return ids

  def init(key, x):
    _ids(x)
    return weights if weights is not None else bert.init_params(config, key)

  init.loaded = weights is not None  # compose: do not jit an init that returns constants

  def apply(params, x, context=None):
    _ids(x)
    h, mask = bert.hidden_states(config, params, x, context, entry_layer=entry_layer)
    if pooling == "none":
      return h
    return bert.pool(h, mask, pooling, normalize)

  def prepare(params, x):
    if entry_layer == 0 or isinstance(x, dict):
      return x
    ids = _ids(x)
    return {"ids": ids, "lower": bert.lower(config, params, ids, entry_layer)}

  def embed(params, x):
    ids = _ids(x)
    mask = bert.text_mask(config, ids)
    if entry_layer == 0:
      h = bert.word_embeddings(params["embeddings"]["word"], ids)
    else:
      h = x["lower"] if isinstance(x, dict) else bert.lower(config, params, ids, entry_layer)
    return bert.pool(h, mask, "mean", False)

  return nets.Net(init, apply, config.hidden_size, embed, prepare)


def token_embeddings(params) -> jax.Array:
  """The word embedding table [vocab, d] of BERT parameters (for prompt initialisation)."""
  return params["embeddings"]["word"]


# --- Loading ----------------------------------------------------------------------------------

def _read_json(path, what):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{what}: cannot read {path}: {e}") from None


def _check_max_len(config: bert.BertConfig, max_len: int) -> None:
  if max_len > config.max_len:
    raise ValueError(f"max_len {max_len} exceeds the checkpoint's position table of "
                     f"{config.max_len} positions; use max_len <= "
                     f"{config.max_len}")


def _read_weights(path: str) -> dict:
  """{tensor name: numpy array} from model.safetensors or its shards."""
  from safetensors.numpy import load_file  # the field's reader; no PyTorch involved

  single = os.path.join(path, "model.safetensors")
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.isfile(single):
    files = [single]
  elif os.path.isfile(index):
    shard_map = _read_json(index, "load").get("weight_map", {})
    files = [os.path.join(path, f) for f in sorted(set(shard_map.values()))]
  else:
    torch_files = [f for f in ("pytorch_model.bin", "model.pt", "model.ckpt")
                   if os.path.exists(os.path.join(path, f))]
    if torch_files:
      raise ValueError(
          f"load: {path} holds its weights only as {torch_files[0]}, a pickle that runs code "
          f"when unpickled; mtpjax reads safetensors only. Convert it once where PyTorch is "
          f"installed: `from safetensors.torch import save_file; import torch; "
          f"save_file({{k: v.contiguous() for k, v in torch.load('{torch_files[0]}', "
          f"weights_only=True).items()}}, 'model.safetensors')`, or download the checkpoint's "
          f"model.safetensors")
    raise ValueError(f"load: no weights in {path}: expected model.safetensors (or "
                     f"model.safetensors.index.json and its shards)")
  weights = {}
  for f in files:
    try:
      weights.update(load_file(f))
    except Exception as e:  # safetensors raises its own error types for damaged files
      raise ValueError(f"load: cannot read weights from {f}: {e}") from None
  return weights


def _hf_to_tree(config: bert.BertConfig, weights: dict) -> dict:
  """Maps BertModel tensor names to this module's pytree, checking every name and shape."""
  # Checkpoints of task models (BertForSequenceClassification, ...) prefix the encoder with
  # "bert." ("roberta."); the heads' tensors are not part of the encoder (see _mlm_head).
  for prefix in ("bert.", "roberta."):
    if not any(k.startswith("embeddings.") for k in weights) and any(
        k.startswith(prefix) for k in weights):
      weights = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
  shapes = config.param_shapes()
  extra = [k for k in weights if k.startswith("encoder.layer.")
           and int(k.split(".")[2]) >= config.num_hidden_layers]
  tensor, check = _tensor_getter(weights, "config.json", extra=[
      f"{len(extra)} tensors of layers beyond num_hidden_layers={config.num_hidden_layers}, "
      f"e.g. {extra[0]!r}"] if extra else [])

  def get(name, shape, transpose=False):
    return tensor(name, shape[::-1]).T if transpose else tensor(name, shape)

  e = shapes["embeddings"]
  emb = {"word": get("embeddings.word_embeddings.weight", e["word"]),
         "position": get("embeddings.position_embeddings.weight", e["position"]),
         "token_type": get("embeddings.token_type_embeddings.weight", e["token_type"]),
         "ln_scale": get("embeddings.LayerNorm.weight", e["ln_scale"]),
         "ln_bias": get("embeddings.LayerNorm.bias", e["ln_bias"])}
  names = {"query": "attention.self.query", "key": "attention.self.key",
           "value": "attention.self.value", "attn_out": "attention.output.dense",
           "ffn_in": "intermediate.dense", "ffn_out": "output.dense"}
  lns = {"ln_attn": "attention.output.LayerNorm", "ln_ffn": "output.LayerNorm"}
  per_layer = []
  for i in range(config.num_hidden_layers):
    pre = f"encoder.layer.{i}."
    layer = {}
    for k, hf in names.items():
      shape = shapes["layers"][k]["kernel"][1:]
      layer[k] = {"kernel": get(pre + hf + ".weight", shape, transpose=True),
                  "bias": get(pre + hf + ".bias", shape[1:])}
    for k, hf in lns.items():
      layer[k] = {"scale": get(pre + hf + ".weight", (config.hidden_size,)),
                  "bias": get(pre + hf + ".bias", (config.hidden_size,))}
    per_layer.append(layer)
  check()
  layers = jax.tree.map(lambda *a: np.stack(a), *per_layer)
  return {"embeddings": emb, "layers": layers}


MLM_NAMES = {  # BertForMaskedLM's and RobertaForMaskedLM's head tensors
    "bert": {"dense.kernel": "cls.predictions.transform.dense.weight",
             "dense.bias": "cls.predictions.transform.dense.bias",
             "ln.scale": "cls.predictions.transform.LayerNorm.weight",
             "ln.bias": "cls.predictions.transform.LayerNorm.bias",
             "bias": "cls.predictions.bias"},
    "roberta": {"dense.kernel": "lm_head.dense.weight", "dense.bias": "lm_head.dense.bias",
                "ln.scale": "lm_head.layer_norm.weight", "ln.bias": "lm_head.layer_norm.bias",
                "bias": "lm_head.bias"},
}


def _mlm_head(config: bert.BertConfig, weights: dict, raw: dict) -> Optional[dict]:
  """The masked-LM head's parameters, or None for a checkpoint without one (a sentence
  encoder). The decoder is tied to the word embeddings; an untied one is refused."""
  names = MLM_NAMES[config.model_type]
  if names["bias"] not in weights:
    return None
  if not raw.get("tie_word_embeddings", True):  # tied: the word embeddings are the decoder
    raise ValueError("load: a masked-LM head with an untied decoder is not supported")
  d, v = config.hidden_size, config.vocab_size
  shapes = {"dense.kernel": (d, d), "dense.bias": (d,), "ln.scale": (d,), "ln.bias": (d,),
            "bias": (v,)}
  get, check = _tensor_getter(weights, "the masked-LM head")  # [out, in] as stored
  flat = {k: get(names[k], shapes[k]) for k in shapes}
  check()
  return {"dense": {"kernel": flat["dense.kernel"].T, "bias": flat["dense.bias"]},
          "ln": {"scale": flat["ln.scale"], "bias": flat["ln.bias"]}, "bias": flat["bias"]}


def _read_tokenizer(path: str, config: bert.BertConfig) -> Tokenizer:
  import tokenizers  # the field's tokenizers (Rust), not a hand-written WordPiece

  tok_json = os.path.join(path, "tokenizer.json")
  vocab_txt = os.path.join(path, "vocab.txt")
  tok_cfg_path = os.path.join(path, "tokenizer_config.json")
  tok_cfg = _read_json(tok_cfg_path, "load") if os.path.isfile(tok_cfg_path) else {}
  pad_token = tok_cfg.get("pad_token", "[PAD]")
  if isinstance(pad_token, dict):
    pad_token = pad_token.get("content", "[PAD]")
  if os.path.isfile(tok_json):
    try:
      tok = tokenizers.Tokenizer.from_file(tok_json)
    except Exception as e:
      raise ValueError(f"load: cannot read the tokenizer {tok_json}: {e}") from None
    source = tok_json
  elif os.path.isfile(vocab_txt):
    from tokenizers.implementations import BertWordPieceTokenizer
    tok = BertWordPieceTokenizer(vocab_txt, lowercase=bool(tok_cfg.get("do_lower_case", True)),
                                 strip_accents=tok_cfg.get("strip_accents"),
                                 handle_chinese_chars=bool(tok_cfg.get("tokenize_chinese_chars",
                                                                       True)))
    source = vocab_txt
  else:
    raise ValueError(f"load: no tokenizer in {path}: expected tokenizer.json or vocab.txt")
  pad_id = tok.token_to_id(pad_token)
  if pad_id is None:
    raise ValueError(f"load: the tokenizer ({source}) has no padding token {pad_token!r}")
  if pad_id != config.pad_token_id:
    raise ValueError(f"load: the tokenizer's padding token {pad_token!r} has id {pad_id}, but "
                     f"config.json says pad_token_id={config.pad_token_id}")
  out = Tokenizer(tok, pad_id=pad_id, pad_token=pad_token, source=source)
  if out.vocab_size > config.vocab_size:
    raise ValueError(f"load: the tokenizer ({source}) has {out.vocab_size} tokens but the "
                     f"embedding table has {config.vocab_size} rows: ids past the table would "
                     f"be garbage. Is this the checkpoint's own tokenizer?")
  if out.vocab_size < config.vocab_size:
    warnings.warn(f"load: the tokenizer ({source}) has {out.vocab_size} tokens and the "
                  f"embedding table {config.vocab_size} rows; the extra rows are never used")
  return out


def _pooling_settings(path: str):
  """(pooling, normalize, max_seq_length) from sentence-transformers' files, if present."""
  pooling, normalize, max_len = "cls", False, None
  modules_path = os.path.join(path, "modules.json")
  if os.path.isfile(modules_path):
    modules = _read_json(modules_path, "load")
    for m in modules:
      kind = str(m.get("type", ""))
      if kind.endswith("models.Pooling"):
        cfg = _read_json(os.path.join(path, m.get("path", ""), "config.json"), "load")
        if cfg.get("pooling_mode_mean_tokens"):
          pooling = "mean"
        elif cfg.get("pooling_mode_cls_token"):
          pooling = "cls"
        else:
          modes = sorted(k for k, v in cfg.items() if k.startswith("pooling_mode") and v)
          raise ValueError(f"load: pooling {modes} in {path} is not supported (mean or cls)")
      elif kind.endswith("models.Normalize"):
        normalize = True
  st_cfg = os.path.join(path, "sentence_bert_config.json")
  if os.path.isfile(st_cfg):
    max_len = _read_json(st_cfg, "load").get("max_seq_length")
  return pooling, normalize, max_len


def load(path: Union[str, os.PathLike], *, dtype=None
         ) -> Union[Pretrained, "language_model.CausalLM", "vision_model.VisionModel"]:
  """Loads a local Hugging Face or timm checkpoint directory or a llama.cpp GGUF file (no
  PyTorch, no network).

  Args:
    path: a directory with config.json, model.safetensors (or an index and shards) and
      tokenizer.json or vocab.txt; sentence-transformers' modules.json / 1_Pooling /
      sentence_bert_config.json set the pooling, normalisation and default max length. Or a
      `.gguf` file of architecture llama (its tokenizer: tokenizer.json beside it, else the
      file's own vocabulary). Vision: a transformers directory (model_type vit, dinov2,
      resnet) or a timm one (config.json with `architecture` tf_efficientnet_*,
      efficientnet_*, resnet<depth>, and its pretrained_cfg).
    dtype: decoders only: the weights' dtype (e.g. jnp.bfloat16); None keeps float32.

  Returns:
    For BERT and RoBERTa, Pretrained(encoder, params, tokenizer, config, pooling, normalize,
    max_len, path, mlm); for decoders (llama, mistral, qwen2, gpt2, GGUF), a CausalLM; for
    vision backbones a VisionModel (features, logits, prompts, lower_states, net).

  (Skipped: it needs the checkpoint in ../shared/data; tests/test_pretrained.py runs it.)

  >>> enc = load("../shared/data/all-MiniLM-L6-v2")                             # doctest: +SKIP
  >>> model = compose(enc.encoder, linear_head(5), prompts.static(8, 384))      # doctest: +SKIP
  >>> params = model.init(key, ids)      # params["shared"] is the loaded weights # doctest: +SKIP
  """
  path = os.fspath(path)
  if gguf_file.is_gguf(path):
    return _load_gguf(path, dtype)
  if not os.path.isdir(path):
    raise ValueError(f"load: {path} is neither a checkpoint directory (config.json and "
                     f"model.safetensors) nor a GGUF file")
  cfg_path = os.path.join(path, "config.json")
  if not os.path.isfile(cfg_path):
    raise ValueError(f"load: {path} has no config.json, so the architecture is unknown")
  raw = _read_json(cfg_path, "load")
  model_type = raw.get("model_type")
  if vision_model.is_timm(raw) or model_type in vision_model.HF_VISION_TYPES:
    if dtype is not None:
      raise ValueError("load: dtype applies to decoders; vision models load in float32")
    if vision_model.is_timm(raw):
      vision_model._timm_family(raw["architecture"])  # unsupported architectures: say so first
    return vision_model.load_vision(path, raw, _read_weights(path), _tensor_getter)
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(f"load: model_type {model_type!r} in {cfg_path} is not supported; "
                     f"supported: {list(SUPPORTED_MODEL_TYPES)}")
  if model_type in DECODER_FAMILIES:
    return _load_decoder(path, raw, dtype)
  if dtype is not None:
    raise ValueError("load: dtype applies to decoders; encoders load in float32")
  if raw.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError(f"load: position_embedding_type {raw['position_embedding_type']!r} is not "
                     f"supported (absolute only)")
  try:
    config = bert.BertConfig.from_dict(raw)
  except TypeError as e:
    raise ValueError(f"load: {cfg_path} lacks a field BERT needs: {e}") from None
  tokenizer = _read_tokenizer(path, config)
  weights = _read_weights(path)
  params = _hf_to_tree(config, weights)
  mlm = _mlm_head(config, weights, raw)
  pooling, normalize, max_len = _pooling_settings(path)
  max_len = min(int(max_len or config.max_len), config.max_len)
  net = encoder(config, weights=params, pooling=pooling, normalize=normalize)
  return Pretrained(net, net.init(None, jnp.zeros((1, 2), jnp.int32)), tokenizer, config,
                    pooling, normalize, max_len, path,
                    None if mlm is None else jax.tree.map(jnp.asarray, mlm))


def encode(path_or_loaded: Union[str, os.PathLike, Pretrained],
           texts: Union[str, Sequence[str]], *, max_len: Optional[int] = None,
           batch_size: int = ENCODE_BATCH, progress: Optional[bool] = None) -> np.ndarray:
  """Sentence embeddings [n, d] float32, as sentence-transformers computes them for that
  directory (its pooling and normalisation), in batches. One string gives one embedding [d]
  (as sentence-transformers does), never one per character.

  Texts are sorted by length and each batch is padded to the next of a few lengths (8, 16,
  32, ...), so most batches are short and only a few shapes compile; padding cannot change
  real positions, so the result does not depend on it. A progress bar shows for more than
  ten batches (progress=True/False forces it).

  (Skipped: it needs the checkpoint in ../shared/data; tests/test_pretrained.py runs it.)

  >>> emb = encode("../shared/data/all-MiniLM-L6-v2", ["hello", "how are you"])  # doctest: +SKIP
  >>> emb.shape                                                                # doctest: +SKIP
  (2, 384)
  """
  loaded = path_or_loaded if isinstance(path_or_loaded, Pretrained) else load(path_or_loaded)
  max_len = loaded.max_len if max_len is None else max_len
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
    raise ValueError(f"encode: batch_size must be a positive integer, got {batch_size!r}")
  if isinstance(texts, str):
    return encode(loaded, [texts], max_len=max_len, batch_size=batch_size,
                  progress=progress)[0]
  texts = list(texts)
  bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
  if bad:
    raise ValueError(f"encode: texts must be strings; item {bad[0]} is "
                     f"{type(texts[bad[0]]).__name__}")
  ids, _ = loaded.tokenize(texts, max_len)                                  # [n, max_len]
  n = len(texts)
  d = loaded.config.hidden_size
  if n == 0:
    return np.zeros((0, d), np.float32)
  return _in_length_buckets(loaded, ids, _jitted_apply(loaded.encoder), (d,), batch_size,
                            progress, "encode")


def lower_states(loaded: Pretrained, ids, entry_layer: int, *, batch_size: int = ENCODE_BATCH,
                 progress: Optional[bool] = None) -> np.ndarray:
  """The hidden states entering layer `entry_layer` [n, T, d] float32 for token ids [n, T]:
  what a late prompt at that layer reads, computed once per text for a frozen encoder.

  Batched by length like `encode`; positions past each text's end are zero (they are masked
  everywhere, so their values never reach a real position). The result, as
  {"ids": ids, "lower": states}, is what loaded.net(entry_layer=...).prepare returns.
  """
  ids = np.asarray(ids)
  if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"lower_states: ids must be an integer array [n, T], got {ids.shape} "
                     f"{ids.dtype}")
  depth = loaded.config.num_hidden_layers
  if isinstance(entry_layer, bool) or not isinstance(entry_layer, int) or not (
      0 < entry_layer < depth):
    raise ValueError(f"lower_states: entry_layer must be an integer in [1, {depth}), got "
                     f"{entry_layer!r} (at layer 0 the prompt reads the ids themselves)")
  config = loaded.config
  fn = _jitted_lower(config, entry_layer)
  t, d = ids.shape[1], config.hidden_size
  if ids.shape[0] == 0:
    return np.zeros((0, t, d), np.float32)
  out = _in_length_buckets(loaded, ids, fn, (t, d), batch_size, progress, "lower layers")
  out[ids == loaded.tokenizer.pad_id] = 0.0  # padding inside a bucket was computed too
  return out


def _in_length_buckets(loaded, ids, fn, shape, batch_size, progress, desc):
  """fn(params, ids[rows, :width]) over length-sorted batches -> [n, *shape] float32; a
  per-position result ([b, width, d]) is zero-padded to shape[0] positions."""
  n = ids.shape[0]
  lengths = (ids != loaded.tokenizer.pad_id).sum(axis=1)
  order = np.argsort(-lengths, kind="stable")
  out = np.zeros((n,) + tuple(shape), np.float32)
  starts = range(0, n, batch_size)
  if progress is None:
    progress = len(starts) > 10
  if progress:
    from tqdm.auto import tqdm
    starts = tqdm(starts, desc=desc, unit="batch")

  def put(rows, result):
    result = np.asarray(result)[:len(rows)]
    if result.ndim == 3:
      out[rows, :result.shape[1]] = result
    else:
      out[rows] = result

  pending = []
  for s in starts:
    rows = order[s:s + batch_size]
    width = _bucket(int(lengths[rows].max()), ids.shape[1])
    batch = np.full((batch_size, width), loaded.tokenizer.pad_id, np.int32)
    batch[:len(rows)] = ids[rows, :width]
    # Dispatch is asynchronous: the next batch is prepared while this one computes.
    pending.append((rows, fn(loaded.params, batch)))
    if len(pending) > 2:
      put(*pending.pop(0))
  for item in pending:
    put(*item)
  return out


_LOWER = {}


def _jitted_lower(config: bert.BertConfig, entry_layer: int):
  key = (config, entry_layer)
  if key not in _LOWER:
    _LOWER[key] = jax.jit(lambda params, ids: bert.lower(config, params, ids, entry_layer))
  return _LOWER[key]


_MLM = {}


def _jitted_mlm(config: bert.BertConfig):
  if config not in _MLM:
    def fn(params, head, ids, types, context):
      h, _ = bert.hidden_states(config, params, ids, context, token_types=types)
      return bert.mlm_logits(config, head, h, params["embeddings"]["word"])
    _MLM[config] = jax.jit(fn)
  return _MLM[config]


_JITTED = {}


def _jitted_apply(net: nets.Net):
  if net.apply not in _JITTED:
    _JITTED.clear()  # one loaded model at a time: do not keep old weights alive
    _JITTED[net.apply] = jax.jit(net.apply)
  return _JITTED[net.apply]


# --- Decoders ---------------------------------------------------------------------------------

def _tensor_getter(weights: dict, source: str, strip=(), extra=()):
  """(get, check): get(name, shape) reads a tensor of {name: array} as float32, collecting
  every missing or misshapen one; check() then raises naming them all (and the `extra`
  problems the caller found). `strip`: name prefixes some checkpoints add ("transformer."
  for GPT-2)."""
  for prefix in strip:
    weights = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in weights.items()}
  problems = list(extra)

  def get(name, shape):
    if name not in weights:
      problems.append(f"missing tensor {name!r}")
      return np.zeros(shape, np.float32)
    a = np.asarray(weights[name])
    if a.shape != tuple(shape):
      problems.append(f"tensor {name!r} has shape {a.shape}, expected {tuple(shape)}")
      return np.zeros(shape, np.float32)
    return a.astype(np.float32)

  def check():
    if problems:
      raise ValueError(f"load: the weights of {source} do not match its config: "
                       + "; ".join(problems[:10])
                       + (f"; and {len(problems) - 10} more" if len(problems) > 10 else ""))
  return get, check


class _GGUFTensors(dict):
  """Dequantizes a GGUF tensor only when the key map asks for it."""

  def __init__(self, file):
    super().__init__({name: None for name in file.names()})
    self._file = file

  def __getitem__(self, name):
    return self._file.tensor(name)


def _decoder_tokenizer(tok_json: Optional[str], file=None):
  import tokenizers
  if tok_json and os.path.isfile(tok_json):
    try:
      return tokenizers.Tokenizer.from_file(tok_json)
    except Exception as e:
      raise ValueError(f"load: cannot read the tokenizer {tok_json}: {e}") from None
  if file is not None:
    return gguf_file.tokenizer_from_gguf(file)
  raise ValueError(f"load: no tokenizer.json beside the weights ({tok_json})")


def _pad_id(tok, tok_cfg: dict, config) -> int:
  pad = tok_cfg.get("pad_token")
  if isinstance(pad, dict):
    pad = pad.get("content")
  if isinstance(pad, str) and tok.token_to_id(pad) is not None:
    return tok.token_to_id(pad)
  for v in (config.pad_token_id, config.eos_token_id, 0):
    if v is not None:
      return int(v)
  return 0


def _insert_at(tok, config) -> int:
  """1 if the tokenizer prepends a BOS token (prompt tokens go after it), else 0."""
  with_specials = tok.encode("a").ids
  without = tok.encode("a", add_special_tokens=False).ids
  bos = config.bos_token_id
  return int(len(with_specials) > len(without) and bos is not None and with_specials[0] == bos)


def _finish_decoder(family, config, params, tok, tok_cfg, path, dtype):
  size = tok.get_vocab_size(with_added_tokens=True)
  if size > config.vocab_size:
    raise ValueError(f"load: the tokenizer of {path} has {size} tokens but the embedding "
                     f"table has {config.vocab_size} rows: is it the checkpoint's own?")
  cast = (lambda a: jnp.asarray(a, dtype)) if dtype is not None else jnp.asarray
  params = jax.tree.map(cast, params)
  return language_model.CausalLM(family, config, params, tok, _pad_id(tok, tok_cfg, config),
                                 _insert_at(tok, config), path)


def _load_decoder(path: str, raw: dict, dtype) -> "language_model.CausalLM":
  model_type = raw["model_type"]
  family = DECODER_FAMILIES[model_type]
  try:
    config = (llama.LlamaConfig if family is llama else gpt2.GPT2Config).from_hf(raw)
  except (KeyError, TypeError) as e:
    raise ValueError(f"load: {path}/config.json lacks a field {model_type} needs: {e}") from None
  get, check = _tensor_getter(_read_weights(path), path,
                              strip=("transformer.",) if family is gpt2 else ())
  params = family.from_hf(config, get)
  check()
  tok_cfg_path = os.path.join(path, "tokenizer_config.json")
  tok_cfg = _read_json(tok_cfg_path, "load") if os.path.isfile(tok_cfg_path) else {}
  tok = _decoder_tokenizer(os.path.join(path, "tokenizer.json"))
  return _finish_decoder(family, config, params, tok, tok_cfg, path, dtype)


def _load_gguf(path: str, dtype) -> "language_model.CausalLM":
  file = gguf_file.GGUFFile(path)
  arch = file.architecture
  if arch != "llama":
    raise ValueError(f"load: GGUF architecture {arch!r} in {path} is not supported (llama: "
                     f"Llama, Mistral, SmolLM)")
  tensors = _GGUFTensors(file)
  config = llama.LlamaConfig.from_gguf(file.metadata, tied="output.weight" not in tensors)
  get, check = _tensor_getter(tensors, path)
  params = llama.from_gguf(config, get)
  check()
  here = os.path.dirname(os.path.abspath(path))
  tok = _decoder_tokenizer(os.path.join(here, "tokenizer.json"), file)
  tok_cfg_path = os.path.join(here, "tokenizer_config.json")
  tok_cfg = _read_json(tok_cfg_path, "load") if os.path.isfile(tok_cfg_path) else {}
  return _finish_decoder(llama, config, params, tok, tok_cfg, path, dtype)
