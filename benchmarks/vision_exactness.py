"""How far mtpjax's vision backbones are from timm's and transformers' references, and what a
late prompt's cached lower stages save.

  .venv/bin/python -m benchmarks.vision_exactness [--data ../shared/data] [--out runs/vision_exactness.json]

For EfficientNet-Lite0 (both input sizes) and every tiny checkpoint (ViT, ViT with a
classifier, DINOv2 at two sizes, ResNet, ResNet with a classifier): the largest relative
error max |a - b| / max(1, max |b|) of the pooled features, the logits, the stage maps
(CNNs) or every layer's stream (ViTs), and timm's top-5 on the photo. Then the time of
EfficientNet-Lite0 features at 96x96 (batch 64) with a FiLM prompt entering at stage 5,
computed from the image against from cached lower stages (median of 5 calls). Prints
markdown tables and writes the figures as JSON.
"""

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import mtpjax as mj

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))


def rows(data):
  out = []
  m = mj.pretrained.load(os.path.join(data, "efficientnet-lite0"))
  z = np.load(os.path.join(data, "efficientnet-lite0-reference.npz"))
  for r in ("r224", "r96"):
    x = z[f"{r}.pixel_values"].transpose(0, 2, 3, 1)
    maps = [_rel(m.lower_states(x, s), z[f"{r}.feature.{i}"].transpose(0, 2, 3, 1))
            for i, s in enumerate((1, 2, 3, 5, 7)) if f"{r}.feature.{i}" in z.files]
    row = {"model": f"EfficientNet-Lite0 {r[1:]}x{r[1:]}", "features": _rel(m.features(x), z[f"{r}.pooled"]),
           "logits": _rel(m.logits(x), z[f"{r}.logits"]), "maps": max(maps) if maps else None}
    if r == "r224":
      row["top5"] = [int(i) for i in np.argsort(-m.logits(x)[5])[:5]]
      row["top5_timm"] = [int(i) for i in np.argsort(-z["r224.logits"][5])[:5]]
    out.append(row)
  for name in ("vit", "vit-cls", "dinov2", "resnet", "resnet-cls"):
    m = mj.pretrained.load(os.path.join(data, "tiny-vision", name))
    z = np.load(os.path.join(data, "tiny-vision", f"{name}-reference.npz"))
    for pre in (("r32.", "r48.") if name == "dinov2" else ("",)):
      x = z[pre + "pixel_values"].transpose(0, 2, 3, 1)
      if name.startswith(("vit", "dinov2")):
        _, layers = m.family.hidden_states(m.config, m.params, jnp.asarray(x), return_layers=True)
        maps = max(_rel(layers[i], z[f"{pre}hidden_states.{i}"])
                   for i in range(m.config.num_hidden_layers + 1))
        ref = z[pre + "pooler_output"] if pre + "pooler_output" in z.files else z[
            pre + "last_hidden_state"][:, 0]
      else:
        maps = max(_rel(m.lower_states(x, s), z[f"hidden_states.{s}"].transpose(0, 2, 3, 1))
                   for s in range(5))
        ref = z["pooler_output"][:, :, 0, 0]
      out.append({"model": f"tiny {name}" + (f" {pre[1:-1]}x{pre[1:-1]}" if pre else ""),
                  "features": _rel(m.features(x), ref),
                  "logits": _rel(m.logits(x), z["logits"]) if "logits" in z.files else None,
                  "maps": maps})
  return out


def late_timing(data, rounds=5):
  m = mj.pretrained.load(os.path.join(data, "efficientnet-lite0"))
  x = jnp.asarray(np.random.default_rng(0).standard_normal((64, 96, 96, 3)), jnp.float32)
  film = {"film": 0.1 * jnp.ones((2, m.stage_channels(5)))}
  f = jax.jit(m.features_fn(5))
  lower = jax.jit(lambda p, x: mj.pretrained._vision_model.lower(m.family, m.config, p, x, 5))
  cached = {"lower": lower(m.params, x)}

  def timed(arg):
    jax.block_until_ready(f(m.params, arg, film))
    ts = []
    for _ in range(rounds):
      t = time.perf_counter()
      jax.block_until_ready(f(m.params, arg, film))
      ts.append(time.perf_counter() - t)
    return float(np.median(ts))

  full, part = timed(x), timed(cached)
  return {"full_s": full, "cached_s": part, "fraction": part / full}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
  parser.add_argument("--out", default=os.path.join(ROOT, "runs", "vision_exactness.json"))
  args = parser.parse_args()
  table = rows(args.data)
  fmt = lambda v: "-" if v is None else f"{v:.1e}"
  print("| model | pooled features | logits | stage maps / layer streams |")
  print("|---|---|---|---|")
  for r in table:
    print(f"| {r['model']} | {fmt(r['features'])} | {fmt(r['logits'])} | {fmt(r['maps'])} |")
  print(f"\nEfficientNet-Lite0 top-5 on the photo: {table[0]['top5']} (timm: {table[0]['top5_timm']})")
  late = late_timing(args.data)
  print(f"\nFiLM prompt entering at stage 5 of EfficientNet-Lite0, 64 images 96x96: "
        f"{late['full_s'] * 1e3:.0f} ms from the images, {late['cached_s'] * 1e3:.0f} ms from "
        f"cached lower stages ({late['fraction']:.2f} of the full pass)")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"rows": table, "late_prompt": late, "jax": jax.__version__,
               "machine": platform.machine(), "cpus": os.cpu_count()}, f, indent=1)


if __name__ == "__main__":
  main()
