"""Speed and memory of the pretrained encoder (all-MiniLM-L6-v2) on this machine.

Three measurements, printed as tables and saved to OUT/pretrained_speed.json with a plot:

1. Encoding throughput (sentences/s) of CLINC150's utterances at max length 32, mtpjax's
   `mj.pretrained.encode` against sentence-transformers on PyTorch (--peer_python: an
   environment with torch and sentence-transformers; never a dependency of mtpjax), the two
   alternating for --rounds rounds on the same CPU threads. The peer's embeddings are compared
   with ours (max abs difference).
2. Second-order prompt-MAML meta-steps/s through the 6 layers: 5-way 1-shot episodes with 5
   queries per class, 8 prompt tokens adapted in the inner loop, a cosine prototype head, meta-
   batch 4, Adam; for 1, 5 and 10 inner steps, with and without remat, with the compiled
   temporary memory (XLA's memory_analysis) of each step.
3. A late prompt entering at layer 4 of 6 with the lower layers computed once per sentence
   (meta_learner(prepare=model.prepare)), against the same prompt at the input.

  .venv/bin/python -m benchmarks.pretrained_speed --peer_python /path/to/torch-venv/bin/python \
      [--sentences 4000] [--rounds 2] [--steps 3] [--out runs/pretrained_speed]
  .venv/bin/python -m benchmarks.pretrained_speed --markdown runs/pretrained_speed/pretrained_speed.json

The second form prints the README's tables from a saved result, running nothing.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import optax

from experiments._lib import compile_timer
import mtpjax as mj
from mtpjax import prompts
from experiments._lib import env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAYS, SHOTS, QUERIES, PROMPT_LEN, META_BATCH, MAX_LEN = 5, 1, 5, 8, 4, 32


def clinc_texts(data_dir, n):
  rows = [json.loads(l) for l in open(os.path.join(data_dir, "clinc150.jsonl"), encoding="utf-8")]
  rng = np.random.default_rng(0)
  texts = [r["text"] for r in rows]
  return [texts[i] for i in rng.permutation(len(texts))[:n]]


def bench_encode(enc, texts, args):
  with tempfile.TemporaryDirectory() as tmp:
    texts_file = os.path.join(tmp, "texts.json")
    json.dump(texts, open(texts_file, "w", encoding="utf-8"))
    mj.pretrained.encode(enc, texts[:256], max_len=MAX_LEN, batch_size=args.batch_size)  # compile
    ours, peer, diff = [], [], None
    for r in range(args.rounds):
      start = time.perf_counter()
      emb = mj.pretrained.encode(enc, texts, max_len=MAX_LEN, batch_size=args.batch_size,
                                 progress=False)
      ours.append(len(texts) / (time.perf_counter() - start))
      line = f"encode round {r + 1}/{args.rounds}: mtpjax {ours[-1]:.0f} sentences/s"
      if args.peer_python:
        emb_file = os.path.join(tmp, "peer.npy")
        cmd = [args.peer_python, "-m", "benchmarks.st_encode", "--model", enc.path, "--texts",
               texts_file, "--max_len", str(MAX_LEN), "--batch_size", str(args.batch_size),
               "--threads", str(args.threads), "--embeddings", emb_file]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        if out.returncode:
          raise RuntimeError(f"peer failed ({' '.join(cmd)}):\n{out.stderr[-3000:]}")
        rec = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")][-1]
        peer.append(rec["sentences"] / rec["seconds"])
        diff = float(np.abs(np.load(emb_file) - emb).max())
        line += (f", sentence-transformers {peer[-1]:.0f} sentences/s (torch {rec['torch']}, "
                 f"{rec['threads']} threads); max |difference| {diff:.1e}")
      print(line, flush=True)
  res = {"sentences": len(texts), "mtpjax_per_s": ours, "mtpjax_median": statistics.median(ours)}
  if peer:
    res.update(peer_per_s=peer, peer_median=statistics.median(peer), max_abs_diff=diff,
               ratio=statistics.median(ours) / statistics.median(peer))
  return res


def clinc_train_family(enc, data_dir):
  """5-way 1-shot episodes (5 queries per class) over CLINC150's in-scope training utterances,
  tokenized at MAX_LEN."""
  rows = [json.loads(l) for l in open(os.path.join(data_dir, "clinc150.jsonl"), encoding="utf-8")]
  rows = [r for r in rows if r["label"] >= 0 and r["split"] == "train"]
  intents = sorted({r["intent"] for r in rows})
  ids, _ = enc.tokenize([r["text"] for r in rows], MAX_LEN)
  return mj.tasks.text.episodes(ids, np.array([intents.index(r["intent"]) for r in rows]),
                                ways=WAYS, shots=SHOTS, queries=QUERIES, class_names=intents)


def prompt_learner(enc, family, *, entry_layer, inner_steps, remat, prepare=True):
  model = mj.compose(enc.net(entry_layer=entry_layer), None, prompts.static(PROMPT_LEN, 384))
  head = mj.prototype_classifier(model, WAYS, distance="cosine", scale=10.0)
  params = head.init(jax.random.key(0), family.sample(jax.random.key(0)).support.x)
  algo = mj.get_algorithm("prompt_maml", outer=("prompt",))
  learner = mj.meta_learner(head.loss_fn, optax.adam(1e-3), algorithm=algo,
                            inner_steps=inner_steps, inner_lr=0.1, meta_batch_size=META_BATCH,
                            sample=family.sample, task_repr=head.task_repr, remat=remat,
                            prepare=model.prepare if prepare else None)
  return learner, learner.init(params, key=jax.random.key(1))


def bench_step(learner, state, steps):
  step = jax.jit(lambda s: learner.step(s))
  with compile_timer() as compiled:
    lowered = step.lower(state)
    exe = lowered.compile()
  temp = exe.memory_analysis().temp_size_in_bytes
  state, m = learner.step(state)  # the learner's own executable, as a user runs it
  jax.block_until_ready(m)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, m = learner.step(state)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - start)
  return {"seconds": statistics.median(times), "steps_per_s": 1.0 / statistics.median(times),
          "temp_bytes": int(temp), "compile_s": compiled["seconds"]}


def markdown(result) -> str:
  """The README's tables from a pretrained_speed.json."""
  out = []
  e = result.get("encode")
  if e:
    fmt = lambda xs: ", ".join(f"{x:.0f}" for x in xs)
    out += ["| what | mtpjax | sentence-transformers |", "|---|---|---|",
            f"| encoding {e['sentences']:,} CLINC150 utterances at max length {MAX_LEN}, batch "
            f"{result['config']['batch_size']} (median of {len(e['mtpjax_per_s'])} rounds) | "
            f"{e['mtpjax_median']:.0f} sentences/s ({fmt(e['mtpjax_per_s'])}) | "
            + (f"{e['peer_median']:.0f} sentences/s ({fmt(e['peer_per_s'])}) |" if "peer_median"
               in e else "- |"), ""]
    if "ratio" in e:
      out += [f"ratio {e['ratio']:.2f}x; max |difference| of the embeddings {e['max_abs_diff']:.1e}",
              ""]
  if result.get("maml"):
    out += ["| inner steps | remat | meta-steps/s | compiled temporary memory |",
            "|---|---|---|---|"]
    out += [f"| {r['inner_steps']} | {'yes' if r['remat'] else 'no'} | {r['steps_per_s']:.3f} | "
            f"{r['temp_bytes'] / 2**20:,.0f} MiB |" for r in result["maml"]]
    out.append("")
  if result.get("late"):
    late = result["late"]
    out.append(f"late prompt at layer 4 (cached): {late['layer4_cached']['steps_per_s']:.3f} "
               f"meta-steps/s; at the input: {late['input']['steps_per_s']:.3f}; "
               f"{late['speedup']:.2f}x")
  return "\n".join(out)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--markdown", default=None,
                      help="print the README tables of this pretrained_speed.json and exit")
  parser.add_argument("--peer_python", default=None)
  parser.add_argument("--data_dir", default=env.data_dir())
  parser.add_argument("--sentences", type=int, default=4000)
  parser.add_argument("--batch_size", type=int, default=mj.pretrained.ENCODE_BATCH)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--steps", type=int, default=3, help="timed meta-steps per setting")
  parser.add_argument("--inner_steps", default="1,5,10")
  parser.add_argument("--skip", default="", help="comma list of parts to skip: encode,maml,late")
  parser.add_argument("--out", default="runs/pretrained_speed")
  args = parser.parse_args()
  if args.markdown:
    with open(args.markdown) as f:
      print(markdown(json.load(f)))
    return
  skip = set(filter(None, args.skip.split(",")))
  enc = mj.pretrained.load(os.path.join(args.data_dir, "all-MiniLM-L6-v2"))
  result = {"device": str(jax.devices()[0]), "backend": jax.default_backend(),
            "jax": jax.__version__, "cpu_count": os.cpu_count(), "config": vars(args)}

  if "encode" not in skip:
    result["encode"] = bench_encode(enc, clinc_texts(args.data_dir, args.sentences), args)

  family = clinc_train_family(enc, args.data_dir)
  if "maml" not in skip:
    result["maml"] = []
    for k in (int(s) for s in args.inner_steps.split(",")):
      for remat in (False, True):
        r = bench_step(*prompt_learner(enc, family, entry_layer=0, inner_steps=k, remat=remat),
                       args.steps)
        r.update(inner_steps=k, remat=remat)
        result["maml"].append(r)
        print(f"prompt-MAML, {k:2d} inner steps, remat {str(remat):5s}: "
              f"{r['steps_per_s']:.3f} meta-steps/s, temp memory {r['temp_bytes'] / 2**20:,.0f} "
              f"MiB, compile {r['compile_s']:.1f} s", flush=True)
  if "late" not in skip:
    late = {}
    for name, entry in (("input", 0), ("layer4_cached", 4)):
      late[name] = bench_step(*prompt_learner(enc, family, entry_layer=entry, inner_steps=5,
                                              remat=False), args.steps)
      print(f"late prompt {name}: {late[name]['steps_per_s']:.3f} meta-steps/s", flush=True)
    late["speedup"] = late["layer4_cached"]["steps_per_s"] / late["input"]["steps_per_s"]
    result["late"] = late
    print(f"late prompt at layer 4 with cached lower layers: {late['speedup']:.2f}x the prompt "
          f"at the input (5 inner steps)", flush=True)

  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "pretrained_speed.json")
  json.dump(result, open(path, "w"), indent=1)
  print(f"wrote {path}")
  print(markdown(result))
  if result.get("maml"):
    plot(result["maml"], os.path.join(args.out, "pretrained_prompt_maml_memory.png"))


def plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
  for remat in (False, True):
    rs = [r for r in rows if r["remat"] == remat]
    label = "remat" if remat else "no remat"
    axes[0].plot([r["inner_steps"] for r in rs], [r["temp_bytes"] / 2**20 for r in rs], "o-",
                 label=label)
    axes[1].plot([r["inner_steps"] for r in rs], [r["steps_per_s"] for r in rs], "o-", label=label)
  axes[0].set(xlabel="inner steps", ylabel="compiled temporary memory (MiB)",
              title="second-order prompt-MAML, MiniLM-L6")
  axes[1].set(xlabel="inner steps", ylabel="meta-steps/s", title="speed (meta-batch 4)")
  for ax in axes:
    ax.legend()
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  print(f"wrote {path}")


if __name__ == "__main__":
  sys.exit(main())
