"""Pretrained text encoders from local Hugging Face checkpoints: load, encode, prompt.

The examples are skipped: they need the MiniLM checkpoint in ../shared/data, and
tests/test_pretrained.py runs the same calls against it.

>>> import mtpjax as mj                                                         # doctest: +SKIP
>>> enc = mj.pretrained.load("../shared/data/all-MiniLM-L6-v2")                 # doctest: +SKIP
>>> mj.pretrained.encode(enc, ["what is my balance"]).shape                     # doctest: +SKIP
(1, 384)
"""

from mtpjax.pretrained._bert import BertConfig, init_params
from mtpjax.pretrained._load import (ENCODE_BATCH, SUPPORTED_MODEL_TYPES, Pretrained, Tokenizer,
                                    encode, encoder, load, lower_states, token_embeddings)

__all__ = ["BertConfig", "ENCODE_BATCH", "Pretrained", "SUPPORTED_MODEL_TYPES", "Tokenizer",
           "encode", "encoder", "init_params", "load", "lower_states", "token_embeddings"]
