"""In-context scoring with the demonstrations run once: an episode's 25 queries (5-way
1-shot, 5 demonstrations) scored against its 5 labels on SmolLM2, each whole context
(demonstrations + query) against the shared demonstrations' cache continued by each query.
Same jitted scores_fn, timed alternately; prints the largest score difference and the ratio.

  .venv/bin/python -m benchmarks.lm_shared_context [--rounds 3] [--data DIR]
"""

import argparse
import os
import statistics
import time

import jax
import numpy as np

import mtpjax as mj
from experiments._lib import env

MODEL = os.path.join("SmolLM2-135M-Instruct-Q4_1", "SmolLM2-135M-Instruct.Q4_1.gguf")
DEMOS = [("how much is in my checking account", "balance"), ("wake me up at 6", "alarm"),
         ("will it rain tomorrow", "weather"), ("play some rock music", "play music"),
         ("book a flight to boston", "book flight")]


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--data", default=None, help="the data directory (default: the shared data)")
  args = ap.parse_args()
  lm = mj.pretrained.load(os.path.join(args.data or env.data_dir(), MODEL))
  shared = "".join(f"Utterance: {t}\nIntent: {label}\n\n" for t, label in DEMOS)
  queries = [f"Utterance: query number {i} about my account and the weather\nIntent:"
             for i in range(25)]
  (ids0, mask0), ids, mask = lm.shared_context(shared, queries)
  joined = [list(ids0[mask0]) + list(r[m]) for r, m in zip(ids, mask)]
  width = max(map(len, joined))
  j_ids = np.zeros((len(joined), width), np.int32)
  j_mask = np.zeros((len(joined), width), bool)
  for i, r in enumerate(joined):
    j_ids[i, :len(r)], j_mask[i, :len(r)] = r, True
  label_ids, label_mask = lm.label_ids([label for _, label in DEMOS])
  f = jax.jit(lm.scores_fn(normalize="mean"))
  whole = lambda: np.asarray(f(lm.params, j_ids, j_mask, label_ids, label_mask))  # noqa: E731
  once = lambda: np.asarray(f(lm.params, ids, mask, label_ids, label_mask, None, None,  # noqa
                              (ids0, mask0)))
  a, b = whole(), once()  # compiles both
  print(f"largest score difference {np.abs(a - b).max():.1e}, same predictions: "
        f"{bool((a.argmax(1) == b.argmax(1)).all())}")
  print(f"tokens run: {int(j_mask.sum())} (whole contexts), "
        f"{int(mask0.sum() + mask.sum())} (demonstrations once + queries)")
  ta, tb = [], []
  for _ in range(args.rounds):
    t = time.perf_counter()
    whole()
    ta.append(time.perf_counter() - t)
    t = time.perf_counter()
    once()
    tb.append(time.perf_counter() - t)
  print(f"median of {args.rounds}: whole contexts {statistics.median(ta):.2f} s, demonstrations "
        f"once {statistics.median(tb):.2f} s: {statistics.median(ta) / statistics.median(tb):.2f}x "
        f"(backend {jax.default_backend()}, jax {jax.__version__})")


if __name__ == "__main__":
  main()
