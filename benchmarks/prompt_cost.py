"""Throughput cost of prompts on the Transformer encoder: none, 20 prompt tokens, a 20-token
prefix in every layer. Forward (inference) and forward+backward (gradient to every parameter),
on the default encoder (width 128, depth 2, 4 heads), timed alternately in one process.

  .venv/bin/python -m benchmarks.prompt_cost [--batch 64] [--length 32] [--rounds 7] [--out DIR]
"""

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import mtpjax as mj
from mtpjax import prompts

VOCAB, WIDTH, DEPTH, HEADS, PROMPT_LEN = 1000, 128, 2, 4, 20


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--length", type=int, default=32)
  ap.add_argument("--iters", type=int, default=50, help="calls per timed round")
  ap.add_argument("--rounds", type=int, default=7)
  ap.add_argument("--out", default=None)
  args = ap.parse_args()

  enc = mj.transformer(VOCAB, width=WIDTH, depth=DEPTH, heads=HEADS, max_len=args.length)
  rng = np.random.default_rng(0)
  x = rng.integers(1, VOCAB, size=(args.batch, args.length)).astype(np.int32)
  x[:, args.length * 3 // 4:] = 0  # a quarter padding, as real text has
  x = jnp.asarray(x)
  kinds = {"none": None, "prompt_20": prompts.static(PROMPT_LEN, WIDTH),
           "prefix_20": prompts.static(PROMPT_LEN, WIDTH, prefix_depth=DEPTH)}
  labels = jnp.arange(args.batch) % 5

  def build(kind):
    model = mj.compose(enc, mj.linear_head(5), kind)
    params = model.init(jax.random.key(0), x)
    loss = lambda p: mj.cross_entropy(model.apply(p, x), labels)
    # A training step's gradient, to every parameter: the backward pass runs through the whole
    # encoder with or without a prompt, so the difference is the prompt's alone.
    return params, jax.jit(lambda p: model.apply(p, x)), jax.jit(jax.grad(loss))

  fns = {name: build(kind) for name, kind in kinds.items()}

  def timed(f, p):
    jax.block_until_ready(f(p))
    t = time.perf_counter()
    for _ in range(args.iters):
      out = f(p)
    jax.block_until_ready(out)
    return args.iters * args.batch / (time.perf_counter() - t)

  rates = {f"{n}/{m}": [] for n in kinds for m in ("forward", "forward+backward")}
  for _ in range(args.rounds):
    for name, (params, fwd, grad) in fns.items():
      rates[f"{name}/forward"].append(timed(fwd, params))
      rates[f"{name}/forward+backward"].append(timed(grad, params))
  med = {k: statistics.median(v) for k, v in rates.items()}
  print(f"encoder width {WIDTH}, depth {DEPTH}, batch {args.batch} x {args.length} tokens, "
        f"{jax.default_backend()}, jax {jax.__version__}; examples/s (median of {args.rounds})")
  result = {"backend": jax.default_backend(), "jax_version": jax.__version__,
            "batch": args.batch, "length": args.length, "examples_per_sec": med, "relative": {}}
  for mode in ("forward", "forward+backward"):
    base = med[f"none/{mode}"]
    for name in kinds:
      r = med[f"{name}/{mode}"]
      result["relative"][f"{name}/{mode}"] = r / base
      print(f"  {mode:17s} {name:10s} {r:10.0f}   {r / base:6.2f}x of no prompt")
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "prompt_cost.json"), "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
