"""Pretrained models from local checkpoints, without PyTorch: load, encode, prompt, generate.

`load(path)` reads a Hugging Face checkpoint directory (config.json, safetensors, tokenizer)
or a llama.cpp `.gguf` file and returns, by the checkpoint's family:
  - BERT and RoBERTa (model_type "bert", "roberta"): a `Pretrained` encoder (sentence
    embeddings; `logits` of the masked-LM head where the checkpoint has one);
  - Llama, Mistral, Qwen2, SmolLM ("llama", "mistral", "qwen2", GGUF "llama") and GPT-2
    ("gpt2"): a `CausalLM` (`tokenize`, `logits`, `generate` with a KV cache, `score`);
  - EfficientNet and ResNet (timm), ResNet, ViT and DINOv2 (transformers): a `VisionModel`
    (`features`, `logits`, `lower_states`, `net` for mj.compose; `preprocess`).
All take prompts as dicts ({"tokens": ...}, {"prefix": ...}; images also {"pixels": ...},
{"film": ...}, {"deep": ...}) through the same calls.

The examples are skipped: they need the checkpoints in ../shared/data, and
tests/test_pretrained.py and tests/test_language_models.py run the same calls against them.

>>> import mtpjax as mj                                                         # doctest: +SKIP
>>> enc = mj.pretrained.load("../shared/data/all-MiniLM-L6-v2")                 # doctest: +SKIP
>>> mj.pretrained.encode(enc, ["what is my balance"]).shape                     # doctest: +SKIP
(1, 384)
>>> lm = mj.pretrained.load("../shared/data/SmolLM2-135M-Instruct-Q4_1/"
...                         "SmolLM2-135M-Instruct.Q4_1.gguf")                  # doctest: +SKIP
>>> lm.generate_text(["The capital of France is"], max_new_tokens=2)            # doctest: +SKIP
[' Paris.']
"""

from mtpjax.pretrained._bert import BertConfig, init_params
from mtpjax.pretrained._demonstrations import in_context
from mtpjax.pretrained._gpt2 import GPT2Config
from mtpjax.pretrained._language_model import CausalLM
from mtpjax.pretrained._llama import LlamaConfig
from mtpjax.pretrained._load import (ENCODE_BATCH, SUPPORTED_MODEL_TYPES, Pretrained, Tokenizer,
                                    encode, encoder, load, lower_states, token_embeddings)
from mtpjax.pretrained._vision_model import VisionModel, preprocess
from mtpjax.pretrained._scoring import (soft_verbalizer, soft_verbalizer_logits,
                                       verbalizer_logits)

__all__ = ["BertConfig", "CausalLM", "ENCODE_BATCH", "GPT2Config", "LlamaConfig", "Pretrained",
           "SUPPORTED_MODEL_TYPES", "Tokenizer", "VisionModel", "encode", "encoder", "in_context",
           "init_params", "load", "lower_states", "preprocess", "soft_verbalizer", "soft_verbalizer_logits",
           "token_embeddings", "verbalizer_logits"]
