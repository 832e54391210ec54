"""EfficientNet-Lite0 inference and pixel-prompt tuning speed: mtpjax against timm (PyTorch).

  .venv/bin/python -m benchmarks.vision_speed --peer_python PATH [--rounds 5] [--out runs/vision_speed.json]

PATH is a Python with torch, timm and safetensors (their own virtualenv, never mtpjax's).
The two sides run as one process pair on the same CPU threads, alternating call by call,
from the same efficientnet-lite0/model.safetensors, in float32, eval mode (batch norm from
its running statistics):
  - inference: logits of a batch of 64 random images at 224x224 and at 96x96; images/s;
  - prompt tuning: one step (forward, backward, Adam update) of a pad prompt (a learned
    30-pixel border, Bahng et al. 2022), the only trainable parameter, on a batch of 32
    images at 224x224 with cross-entropy on the 1000 ImageNet logits;
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
INFER_BATCH, TUNE_BATCH, TUNE_SIZE, BORDER = 64, 32, 224, 30

PEER = r'''
import json, sys, time
import torch, timm
from safetensors.torch import load_file
torch.set_num_threads(int(sys.argv[2]))
torch.manual_seed(0)
B, TB, S, P = [int(v) for v in sys.argv[3:7]]
m = timm.create_model("tf_efficientnet_lite0", pretrained=False)
m.load_state_dict(load_file(sys.argv[1]), strict=True)
m.eval()
for p in m.parameters():
  p.requires_grad_(False)
images = {224: torch.randn(B, 3, 224, 224), 96: torch.randn(B, 3, 96, 96)}
x, y = torch.randn(TB, 3, S, S), torch.randint(0, 1000, (TB,))
pad = {"top": torch.zeros(3, P, S), "bottom": torch.zeros(3, P, S),
       "left": torch.zeros(3, S - 2 * P, P), "right": torch.zeros(3, S - 2 * P, P)}
pad = {k: torch.nn.Parameter(v) for k, v in pad.items()}
opt = torch.optim.Adam(list(pad.values()), lr=1e-2)
def infer(size):
  with torch.no_grad():
    t = time.perf_counter()
    m(images[size])
    return time.perf_counter() - t
def tune():
  t = time.perf_counter()
  middle = torch.zeros(3, S - 2 * P, S - 2 * P)
  delta = torch.cat([pad["top"], torch.cat([pad["left"], middle, pad["right"]], 2),
                     pad["bottom"]], 1)
  loss = torch.nn.functional.cross_entropy(m(x + delta), y)
  opt.zero_grad(); loss.backward(); opt.step()
  return time.perf_counter() - t
infer(224); infer(96); tune()  # warm-up
out = {"torch": torch.__version__, "timm": timm.__version__}
print(json.dumps(out), flush=True)
for line in sys.stdin:
  what = line.strip()
  if what == "quit": break
  s = infer(224) if what == "infer224" else infer(96) if what == "infer96" else tune()
  print(json.dumps({what: s}), flush=True)
'''


def mtpjax_side(path):
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  import mtpjax as mj
  from experiments._lib.timing import compile_timer

  m = mj.pretrained.load(path)
  rng = np.random.default_rng(0)
  images = {s: jnp.asarray(rng.standard_normal((INFER_BATCH, s, s, 3)), jnp.float32)
            for s in (224, 96)}
  logits = jax.jit(m.logits_fn())

  def infer_fn(size):
    def call():
      t = time.perf_counter()
      jax.block_until_ready(logits(m.params, images[size]))
      return time.perf_counter() - t
    return call

  kind = mj.prompts.pad(TUNE_SIZE, TUNE_SIZE, BORDER)
  _, prompt = kind.init(jax.random.key(0))
  x = jnp.asarray(rng.standard_normal((TUNE_BATCH, TUNE_SIZE, TUNE_SIZE, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 1000, TUNE_BATCH))
  opt = optax.adam(1e-2)
  f = m.logits_fn()

  @jax.jit
  def step(prompt, opt_state, params):
    loss = lambda p: mj.cross_entropy(f(params, x, kind.apply(None, p)), y)
    value, g = jax.value_and_grad(loss)(prompt)
    updates, opt_state = opt.update(g, opt_state)
    return optax.apply_updates(prompt, updates), opt_state, value

  state = {"prompt": prompt, "opt": opt.init(prompt)}

  def tune():
    t = time.perf_counter()
    state["prompt"], state["opt"], value = step(state["prompt"], state["opt"], m.params)
    jax.block_until_ready(value)
    return time.perf_counter() - t

  calls = {"infer224": infer_fn(224), "infer96": infer_fn(96), "tune": tune}
  compile_s = {}
  for name, call in calls.items():
    with compile_timer() as compiled:
      call()
    compile_s[name] = compiled["seconds"]
  return calls, compile_s


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--peer_python", required=True,
                      help="a Python with torch, timm and safetensors (its own virtualenv)")
  parser.add_argument("--data", default=os.environ.get("MTPJAX_DATA_DIR")
                      or os.path.join(ROOT, "..", "shared", "data"))
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--out", default="runs/vision_speed.json")
  args = parser.parse_args()
  path = os.path.join(args.data, "efficientnet-lite0")
  if not os.path.isdir(path):
    parser.error(f"no checkpoint at {path}")
  import jax
  peer = subprocess.Popen(
      [args.peer_python, "-c", PEER, os.path.join(path, "model.safetensors"),
       str(args.threads), str(INFER_BATCH), str(TUNE_BATCH), str(TUNE_SIZE), str(BORDER)],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  calls, compile_s = mtpjax_side(path)   # the peer loads and warms up meanwhile
  line = peer.stdout.readline()
  if not line:
    sys.exit(f"the peer process ended (exit {peer.wait()}); run it alone to see why")
  versions = json.loads(line)
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
  med = statistics.median
  rows = []
  for name, label, work in (("infer224", "inference 224x224, batch 64 (images/s)", INFER_BATCH),
                            ("infer96", "inference 96x96, batch 64 (images/s)", INFER_BATCH),
                            ("tune", "pad-prompt step, batch 32 at 224x224 (ms)", None)):
    a, b = med(ours[name]), med(theirs[name])
    rows.append((label, work / a, work / b, b / a) if work else (label, 1e3 * a, 1e3 * b, b / a))
  print(f"EfficientNet-Lite0, float32, {args.threads} threads, median of {args.rounds} rounds")
  print("| measure | mtpjax | timm | mtpjax speed-up |")
  print("|---|---:|---:|---:|")
  for label, a, b, ratio in rows:
    print(f"| {label} | {a:.1f} | {b:.1f} | {ratio:.2f}x |")
  print("mtpjax compile (s): " + ", ".join(f"{k} {v:.1f}" for k, v in compile_s.items()))
  meta = {"jax": jax.__version__, "device": jax.devices()[0].device_kind,
          "cpu": platform.processor() or platform.machine(), "threads": args.threads, **versions}
  print(", ".join(f"{k} {v}" for k, v in meta.items()))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"mtpjax_s": ours, "timm_s": theirs, "compile_s": compile_s, "rows": rows,
               **meta}, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
