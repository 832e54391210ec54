"""The peer side of benchmarks/pretrained_speed.py: sentence-transformers on PyTorch.

Runs in its own environment (PyTorch and sentence-transformers are never dependencies of
mtpjax): encodes the sentences of --texts (a JSON list) with the checkpoint directory --model
at --max_len, --rounds times, and prints one JSON line per round with the seconds it took;
--embeddings saves the last round's embeddings (.npy) for the accuracy check.
"""

import argparse
import json
import time

import numpy as np
import torch
from sentence_transformers import SentenceTransformer


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--model", required=True)
  p.add_argument("--texts", required=True)
  p.add_argument("--max_len", type=int, default=32)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--rounds", type=int, default=1)
  p.add_argument("--embeddings", default=None)
  a = p.parse_args()
  torch.set_num_threads(a.threads)
  texts = json.load(open(a.texts, encoding="utf-8"))
  model = SentenceTransformer(a.model, device="cpu")
  model.max_seq_length = a.max_len
  model.encode(texts[:a.batch_size], batch_size=a.batch_size)  # warm-up
  for _ in range(a.rounds):
    start = time.perf_counter()
    with torch.inference_mode():
      emb = model.encode(texts, batch_size=a.batch_size, convert_to_numpy=True)
    print(json.dumps({"seconds": time.perf_counter() - start, "sentences": len(texts),
                      "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
  if a.embeddings:
    np.save(a.embeddings, emb.astype(np.float32))


if __name__ == "__main__":
  main()
