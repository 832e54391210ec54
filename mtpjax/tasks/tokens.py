"""Synthetic few-shot text classification, for tests and examples without downloads.

Each class owns a few keyword tokens; an example is random filler text of random length
(padded with id 0) containing one of its class's keywords at a random position. A model must
find the keyword, so the task needs attention over the sequence rather than a bag of
positions.
"""

import numpy as np


def keyword_classes(seed: int, *, num_classes: int, per_class: int, length: int,
                    vocab_size: int, keywords_per_class: int = 2, min_length: int = 3) -> np.ndarray:
  """Token ids [num_classes, per_class, length], int32, padding id 0.

  Keywords take ids 1..num_classes * keywords_per_class; filler is drawn from the rest.
  """
  n_kw = num_classes * keywords_per_class
  if vocab_size <= n_kw + 1:
    raise ValueError(f"keyword_classes: vocab_size {vocab_size} must exceed the {n_kw} keywords + 1")
  if not 1 <= min_length <= length:
    raise ValueError(f"keyword_classes: need 1 <= min_length <= length, got {min_length}, {length}")
  rng = np.random.default_rng(seed)
  keywords = np.arange(1, n_kw + 1).reshape(num_classes, keywords_per_class)
  data = np.zeros((num_classes, per_class, length), np.int32)
  lengths = rng.integers(min_length, length + 1, size=(num_classes, per_class))
  for c in range(num_classes):
    for e in range(per_class):
      n = lengths[c, e]
      seq = rng.integers(n_kw + 1, vocab_size, size=n)
      seq[rng.integers(0, n)] = rng.choice(keywords[c])
      data[c, e, :n] = seq
  return data
