"""llama.cpp's GGUF files: metadata, dequantized tensors and the tokenizer they carry.

Read with the `gguf` package (llama.cpp's own reader): `dequantize` turns every quantized type
it knows (Q4_0, Q4_1, Q8_0, K-quants, ...) into float32 exactly as llama.cpp does. GGUF lists a
shape innermost first; the arrays here are in the usual order, [out, in] for a matrix (the
layout of torch.nn.Linear.weight).
"""

import os
from typing import Optional

import numpy as np

# llama.cpp's pre-tokenizer names (tokenizer.ggml.pre) whose split this module reproduces
# with the `tokenizers` package. "smollm" isolates every digit before GPT-2's split.
PRE_TOKENIZERS = ("default", "gpt2", "smollm")


class GGUFFile:
  """A GGUF file's metadata {key: value} and tensors, read lazily by name."""

  def __init__(self, path: str):
    import gguf  # llama.cpp's reader: no hand-written parser of the format

    try:
      self._reader = gguf.GGUFReader(path)
    except Exception as e:  # the reader raises plain errors for damaged files
      raise ValueError(f"load: cannot read the GGUF file {path}: {e}") from None
    self.path = path
    self.metadata = {}
    for name, field in self._reader.fields.items():
      try:
        self.metadata[name] = field.contents()
      except Exception:  # noqa: BLE001 (a value type this reader version cannot decode)
        continue
    self._tensors = {t.name: t for t in self._reader.tensors}

  @property
  def architecture(self) -> Optional[str]:
    return self.metadata.get("general.architecture")

  def names(self):
    return list(self._tensors)

  def tensor(self, name: str) -> np.ndarray:
    """The named tensor as float32, shape in the usual (outermost-first) order."""
    from gguf import quants

    t = self._tensors[name]
    a = quants.dequantize(t.data, t.tensor_type)
    shape = tuple(int(s) for s in reversed(t.shape))
    return np.asarray(a, np.float32).reshape(shape)


def tokenizer_from_gguf(file: GGUFFile):
  """A `tokenizers` byte-level BPE tokenizer built from the file's vocabulary and merges.

  Only GPT-2-style BPE (tokenizer.ggml.model "gpt2") with one of PRE_TOKENIZERS is rebuilt;
  for anything else put the checkpoint's tokenizer.json beside the file. Control tokens
  (token type 3) become special tokens. A BOS is prepended when tokenizer.ggml.add_bos_token
  says so.
  """
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers, processors

  meta = file.metadata
  model = meta.get("tokenizer.ggml.model")
  pre = meta.get("tokenizer.ggml.pre", "default")
  if model != "gpt2" or pre not in PRE_TOKENIZERS:
    raise ValueError(f"load: {file.path} has a {model!r} tokenizer with pre-tokenizer {pre!r}; "
                     f"mtpjax rebuilds only byte-level BPE ('gpt2') with {PRE_TOKENIZERS}. Put "
                     f"the checkpoint's tokenizer.json beside the file")
  tokens = list(meta["tokenizer.ggml.tokens"])
  vocab = {t: i for i, t in enumerate(tokens)}
  merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
  tok = tokenizers.Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
  split = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
  if pre == "smollm":
    split.insert(0, pre_tokenizers.Digits(individual_digits=True))
  tok.pre_tokenizer = pre_tokenizers.Sequence(split)
  tok.decoder = decoders.ByteLevel()
  types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
  specials = [tokenizers.AddedToken(t, special=True, normalized=False)
              for t, kind in zip(tokens, types) if kind == 3]
  tok.add_special_tokens(specials)
  bos = meta.get("tokenizer.ggml.bos_token_id")
  if meta.get("tokenizer.ggml.add_bos_token") and bos is not None:
    bos_token = tokens[int(bos)]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos_token} $A", pair=f"{bos_token} $A {bos_token} $B",
        special_tokens=[(bos_token, int(bos))])
  return tok


def is_gguf(path: str) -> bool:
  """A file whose first four bytes are GGUF's magic."""
  if not os.path.isfile(path):
    return False
  with open(path, "rb") as f:
    return f.read(4) == b"GGUF"
