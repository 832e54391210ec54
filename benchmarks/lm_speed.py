"""Generation and prompt-tuning speed of SmolLM2-135M: mtpjax against transformers (PyTorch).

  .venv/bin/python -m benchmarks.lm_speed --peer_python PATH [--rounds 3] [--out runs/lm_speed.json]

PATH is a Python with torch and transformers (their own virtualenv, never mtpjax's). The two
sides run as one process pair on the same CPU threads, alternating round by round, from the
same GGUF file (dequantized to float32 by both):
  - generation: greedy decoding of 128 new tokens with the KV cache, batch 1 and batch 8
    (nothing stops early: transformers gets min_new_tokens=128); tokens/s = batch * 128 / s;
  - prompt tuning: one step (forward, backward, Adam update) of a 20-token soft prompt, the
    only trainable parameter, on batch 8 x 64 tokens with the next-token loss;
  - mtpjax's compile times (trace, lowering and XLA compile, from JAX's own events).
Median over rounds. Prints a markdown table and writes JSON.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join("SmolLM2-135M-Instruct-Q4_1", "SmolLM2-135M-Instruct.Q4_1.gguf")
PROMPTS = ["The capital of France is", "how do you say fast in spanish",
           "what is my checking account balance", "set an alarm for 7 am tomorrow",
           "book a table for two at an italian restaurant", "what's the weather like in paris",
           "play some relaxing jazz music", "remind me to call my mother tonight"]
NEW_TOKENS, TUNE_BATCH, TUNE_LEN, SOFT_LEN = 128, 8, 64, 20

PEER = r'''
import json, sys, time, os
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(int(sys.argv[2]))
torch.manual_seed(0)
path = sys.argv[1]  # one timing per line read from stdin: the driver alternates the sides
d, f = os.path.split(path)
tok = AutoTokenizer.from_pretrained(d)  # the tokenizer.json beside the file (mtpjax reads it too)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
prompts = json.loads(sys.argv[3])
N, B, T, P = [int(x) for x in sys.argv[4:8]]
tok.padding_side = "left"
if tok.pad_token is None:
  tok.pad_token = tok.eos_token
out = {"torch": torch.__version__, "transformers": __import__("transformers").__version__}
def gen(batch):
  enc = tok(prompts[:batch], return_tensors="pt", padding=True)
  with torch.no_grad():
    t = time.perf_counter()
    model.generate(**enc, max_new_tokens=N, min_new_tokens=N, do_sample=False,
                   use_cache=True, pad_token_id=tok.pad_token_id)
    return time.perf_counter() - t
for p in model.parameters():
  p.requires_grad_(False)
emb = model.get_input_embeddings()
soft = torch.nn.Parameter(0.1 * torch.randn(P, emb.weight.shape[1]))
opt = torch.optim.Adam([soft], lr=1e-3)
ids = torch.randint(3, emb.weight.shape[0], (B, T))
def tune():
  t = time.perf_counter()
  x = torch.cat([soft.expand(B, -1, -1), emb(ids)], 1)
  logits = model(inputs_embeds=x).logits[:, P:-1]
  loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           ids[:, 1:].reshape(-1))
  opt.zero_grad(); loss.backward(); opt.step()
  return time.perf_counter() - t
gen(1); tune()  # warm-up
for line in sys.stdin:
  what = line.strip()
  if what == "quit": break
  s = gen(1) if what == "gen1" else gen(8) if what == "gen8" else tune()
  print(json.dumps({what: s}), flush=True)
'''


def mtpjax_side(path):
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  import mtpjax as mj
  from experiments._lib.timing import compile_timer
  from mtpjax.pretrained import _causal_lm as clm

  lm = mj.pretrained.load(path)
  timings = {}

  def gen_fn(batch):
    ids, mask = lm.tokenize(PROMPTS[:batch])

    def call():
      t = time.perf_counter()
      lm.generate(ids, mask, max_new_tokens=NEW_TOKENS)  # returns numpy: synchronised
      return time.perf_counter() - t
    return call

  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(3, lm.config.vocab_size, (TUNE_BATCH, TUNE_LEN)), jnp.int32)
  mask = jnp.ones_like(ids, bool)
  soft = jnp.asarray(0.1 * rng.standard_normal((SOFT_LEN, lm.width)), jnp.float32)
  opt = optax.adam(1e-3)

  def loss(soft, params):
    h = clm.forward(lm.family, lm.config, params, ids, mask, tokens=soft, insert_at=0)
    logits = lm.family.head(lm.config, params, h[:, SOFT_LEN:-1])
    return mj.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

  @jax.jit
  def step(soft, opt_state, params):
    value, g = jax.value_and_grad(loss)(soft, params)
    updates, opt_state = opt.update(g, opt_state)
    return optax.apply_updates(soft, updates), opt_state, value

  state = {"soft": soft, "opt": opt.init(soft)}

  def tune():
    t = time.perf_counter()
    state["soft"], state["opt"], value = step(state["soft"], state["opt"], lm.params)
    jax.block_until_ready(value)
    return time.perf_counter() - t

  calls = {"gen1": gen_fn(1), "gen8": gen_fn(8), "tune": tune}
  for name, call in calls.items():
    with compile_timer() as compiled:
      call()
    timings[f"{name}_compile"] = compiled["seconds"]
  return calls, timings


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--peer_python", required=True,
                      help="a Python with torch and transformers (its own virtualenv)")
  parser.add_argument("--data", default=os.environ.get("MTPJAX_DATA_DIR")
                      or os.path.join(ROOT, "..", "shared", "data"))
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--out", default="runs/lm_speed.json")
  args = parser.parse_args()
  path = os.path.join(args.data, MODEL)
  if not os.path.isfile(path):
    parser.error(f"no model at {path}")
  import jax
  peer = subprocess.Popen(
      [args.peer_python, "-c", PEER, path, str(args.threads),
       json.dumps(PROMPTS), str(NEW_TOKENS), str(TUNE_BATCH), str(TUNE_LEN), str(SOFT_LEN)],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
      env={**os.environ, "TQDM_DISABLE": "1"})
  calls, compile_s = mtpjax_side(path)   # the peer loads and warms up meanwhile
  ours, theirs = {k: [] for k in calls}, {k: [] for k in calls}
  for _ in range(args.rounds):
    for name, call in calls.items():
      ours[name].append(call())
      peer.stdin.write(name + "\n")
      peer.stdin.flush()
      line = peer.stdout.readline()
      if not line:
        sys.exit(f"the peer process ended (exit {peer.wait()}); run it alone to see why")
      theirs[name].append(json.loads(line)[name])
  peer.stdin.write("quit\n")
  peer.stdin.flush()
  peer.wait()
  med = lambda v: statistics.median(v)
  rows = []
  for name, label, work in (("gen1", "generation, batch 1 (tokens/s)", NEW_TOKENS),
                            ("gen8", "generation, batch 8 (tokens/s)", 8 * NEW_TOKENS),
                            ("tune", "prompt-tuning step (ms)", None)):
    a, b = med(ours[name]), med(theirs[name])
    if work:
      rows.append((label, work / a, work / b, b / a))
    else:
      rows.append((label, 1e3 * a, 1e3 * b, b / a))
  print(f"SmolLM2-135M-Instruct (Q4_1 GGUF, float32), {args.threads} threads, median of "
        f"{args.rounds} rounds")
  print("| measure | mtpjax | transformers | mtpjax speed-up |")
  print("|---|---:|---:|---:|")
  for label, a, b, ratio in rows:
    print(f"| {label} | {a:.1f} | {b:.1f} | {ratio:.2f}x |")
  print("mtpjax compile (s): " + ", ".join(f"{k[:-8]} {v:.1f}" for k, v in compile_s.items()))
  meta = {"jax": jax.__version__, "device": jax.devices()[0].device_kind,
          "cpu": platform.processor() or platform.machine(), "threads": args.threads}
  print(f"jax {meta['jax']} on {meta['device']}")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"mtpjax_s": ours, "transformers_s": theirs, "compile_s": compile_s,
               "rows": rows, **meta}, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
