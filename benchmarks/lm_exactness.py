"""How far mtpjax's language models are from transformers' references in ../shared/data.

  .venv/bin/python -m benchmarks.lm_exactness [--data ../shared/data] [--out runs/lm_exactness.json]

For every tiny checkpoint (Llama, Qwen2, GPT-2, BERT and RoBERTa masked LMs) and for
SmolLM2-135M-Instruct read from its Q4_1 GGUF file: whether the token ids are equal, the
largest |a - b| of hidden states and logits at real positions, whether the cached greedy
continuations equal the references (up to the first step whose recorded margin is below
1e-3), the label log-likelihoods, and the soft-prompt and prefix forwards. The tolerances are
lm-MANIFEST.md's; a row says whether it is within them. Prints a markdown table and writes
the figures as JSON.
"""

import argparse
import json
import os
import platform

import jax
import numpy as np

import mtpjax as mj

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _diff(a, b, atol, rtol):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max()), bool((np.abs(a - b) <= atol + rtol * np.abs(b)).all())


def _greedy_equal(new, want, margins):
  upto = int(np.argmax(margins < 1e-3)) if (margins < 1e-3).any() else len(want)
  return bool((new[:upto] == want[:upto]).all()), upto


def tiny_rows(data):
  rows = []
  for name in ("llama", "qwen2", "gpt2", "bert", "roberta"):
    path = os.path.join(data, "tiny-lm", name)
    if not os.path.isdir(path):
      continue
    ref = np.load(path + "-reference.npz")
    with open(path + "-reference.json") as f:
      js = json.load(f)
    m = mj.pretrained.load(path)
    t = ref["input_ids"].shape[1]
    tol = (1e-5, 1e-4)
    if name in ("bert", "roberta"):
      texts = [x["text"] if x.get("text") is not None else tuple(x["pair"]) for x in js["texts"]]
      ids, mask, types = m.tokenize(texts, t, token_types=True)
      lg = m.logits(ids, mask, token_types=types)
      masked, _ = m.tokenize(js["masked_texts"], ref["masked_input_ids"].shape[1])
      r, c = ref["mask_positions"].T
      row = {"model": f"tiny {name} (masked LM)",
             "ids_equal": bool((ids == ref["input_ids"]).all()
                               and (types == ref["token_type_ids"]).all()),
             "logits": _diff(lg[mask], ref["logits"][mask], *tol),
             "mask_logits": _diff(m.logits(masked)[r, c], ref["mask_logits"], *tol)}
    else:
      ids, mask = m.tokenize([x["text"] for x in js["texts"]], t)
      h, layers = m.hidden_states(ids, mask, return_layers=True)
      greedy = []
      for k, p in enumerate(ref["greedy_prompt_ids"]):
        p = p[p >= 0][None]
        new, step = m.generate(p, np.ones_like(p, bool), max_new_tokens=12, return_logits=True)
        greedy.append((_greedy_equal(new[0], ref["greedy_new_ids"][k], ref["greedy_margin"][k]),
                       _diff(step[0], ref["greedy_step_logits"][k], *tol)))
      row = {"model": f"tiny {name}",
             "ids_equal": bool((ids == ref["input_ids"]).all()),
             "logits": _diff(m.logits(ids, mask)[mask], ref["logits"][mask], *tol),
             "hidden": _diff(np.concatenate([layers[l][mask] for l in range(len(layers) - 1)]
                                            + [h[mask]]),
                             np.concatenate([ref["hidden_states"][l + 1][mask]
                                             for l in range(len(layers) - 1)]
                                            + [ref["hidden_states"][-1][mask]]), *tol),
             "greedy_equal": all(g[0][0] for g in greedy),
             "greedy_step_logits": (max(g[1][0] for g in greedy), all(g[1][1] for g in greedy))}
    rows.append(row)
  return rows


def smol_row(data):
  path = os.path.join(data, "SmolLM2-135M-Instruct-Q4_1", "SmolLM2-135M-Instruct.Q4_1.gguf")
  if not os.path.isfile(path):
    return None
  ref = np.load(os.path.join(data, "smollm2-reference.npz"))
  with open(os.path.join(data, "smollm2-reference.json")) as f:
    js = json.load(f)
  m = mj.pretrained.load(path)
  ids, mask = m.tokenize([x["text"] for x in js["texts"]], 40)
  keep = mask.any(axis=1)
  mk = mask[keep]
  h = m.hidden_states(ids[keep], mask[keep])
  lg = m.logits(ids[keep], mask[keep])
  last = lg[np.arange(keep.sum()), mk.sum(1) - 1]
  lengths = ref["lengths"]
  rows = [ref["input_ids"][i, :lengths[i]] for i in ref["greedy_text_index"]]
  g_ids = np.full((len(rows), max(map(len, rows))), m.pad_id, np.int32)
  g_mask = np.zeros_like(g_ids, bool)
  for i, r in enumerate(rows):
    g_ids[i, :len(r)], g_mask[i, :len(r)] = r, True
  new = m.generate(g_ids, g_mask, max_new_tokens=24)
  greedy = [_greedy_equal(new[k], ref["greedy_new_ids"][k], ref["greedy_margin"][k])
            for k in range(len(rows))]
  sc = js["scoring"]
  scores = m.score(sc["prompts"], sc["labels"], label_prefix=sc["label_prefix"])
  soft = {"tokens": ref["soft_prompt"]}
  s_ids = ref["soft_start_input_ids"][None]
  a_ids = ref["soft_after_bos_input_ids"][None]
  kv = np.stack([ref["prefix_keys"], ref["prefix_values"]], 1)
  layers_, _, heads, p, hd = kv.shape
  prefix = {"prefix": kv.transpose(0, 1, 3, 2, 4).reshape(layers_, 2, p, heads * hd)}
  p_ids = ref["prefix_input_ids"][None]
  ones = lambda a: np.ones_like(a, bool)
  return {
      "model": "SmolLM2-135M-Instruct (Q4_1 GGUF)",
      "ids_equal": bool((ids == ref["input_ids"]).all()),
      "hidden": _diff(h[mk], ref["final_hidden"][keep][mk], 2e-3, 1e-3),
      "logits": _diff(last, ref["logits_last"][keep], 2e-3, 1e-4),
      "greedy_equal": all(g[0] for g in greedy),
      "greedy_steps_compared": [g[1] for g in greedy],
      "label_scores": _diff(scores, ref["score_sum_logprob"], 2e-3, 0.0),
      "label_argmax_equal": bool((scores.argmax(1) == ref["score_sum_logprob"].argmax(1)).all()),
      "soft_prompt_first": _diff(m._replace(insert_at=0).logits(s_ids, ones(s_ids), prompt=soft)[0],
                                 ref["soft_start_logits"], 2e-3, 1e-4),
      "soft_prompt_after_bos": _diff(
          m._replace(insert_at=1).logits(a_ids, ones(a_ids), prompt=soft)[0, -1],
          ref["soft_after_bos_logits_last"], 2e-3, 1e-4),
      "prefix_after": _diff(m.logits(p_ids, ones(p_ids), prompt=prefix)[0, -1],
                            ref["prefix_logits_last_default_positions"], 2e-3, 1e-4),
      "prefix_from_0": _diff(m.logits(p_ids, ones(p_ids), prompt=prefix,
                                      prefix_positions="from_0")[0, -1],
                             ref["prefix_logits_last_positions_from_0"], 2e-3, 1e-4),
  }


def _cell(v):
  if isinstance(v, tuple):
    return f"{v[0]:.2g} ({'ok' if v[1] else 'OUT'})"
  if isinstance(v, bool):
    return "yes" if v else "NO"
  return str(v)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", default=os.environ.get("MTPJAX_DATA_DIR")
                      or os.path.join(ROOT, "..", "shared", "data"))
  parser.add_argument("--out", default="runs/lm_exactness.json")
  args = parser.parse_args()
  rows = tiny_rows(args.data)
  smol = smol_row(args.data)
  if smol:
    rows.append(smol)
  if not rows:
    parser.error(f"no reference data under {args.data}")
  cols = ["ids_equal", "hidden", "logits", "greedy_equal", "greedy_step_logits", "mask_logits",
          "label_scores", "label_argmax_equal", "soft_prompt_first", "soft_prompt_after_bos",
          "prefix_after", "prefix_from_0"]
  cols = [c for c in cols if any(c in r for r in rows)]
  print("max |a - b| against transformers (within the manifest's tolerance: ok)")
  print("| model | " + " | ".join(cols) + " |")
  print("|---" * (len(cols) + 1) + "|")
  for r in rows:
    print(f"| {r['model']} | " + " | ".join(_cell(r[c]) if c in r else "-" for c in cols) + " |")
  meta = {"jax": jax.__version__, "device": jax.devices()[0].device_kind,
          "platform": platform.platform()}
  print(f"jax {meta['jax']}, {meta['device']}")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"rows": rows, **meta}, f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
