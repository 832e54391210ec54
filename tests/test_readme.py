"""The code of the README and of the docs' guides must run as written."""

import glob
import os
import re

import jax
import numpy as np
import pytest
from experiments._lib import env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


PAGES = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in
                               glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))


def all_blocks() -> dict:
  """{(page, i): the i-th python block of the page}, for the README and every docs page."""
  blocks = {}
  for page in PAGES:
    with open(os.path.join(ROOT, page)) as f:
      for i, code in enumerate(re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)):
        blocks[(page, i)] = code
  return blocks


def run_block(page, i, capsys) -> dict:
  """Runs a block as a reader pastes it; it must print what it computes."""
  blocks = all_blocks()
  assert (page, i) in blocks, f"{page} lost its python block {i}"
  namespace = {}
  exec(compile(blocks[(page, i)], page, "exec"), namespace)
  assert capsys.readouterr().out.strip(), f"{page} block {i} computes but prints nothing"
  return namespace


# The blocks whose results the tests below check; every other block must run and print.
CHECKED = {("README.md", 0), ("docs/guides/prompts.md", 0), ("docs/guides/pretrained.md", 0),
           ("docs/guides/pretrained.md", 1), ("docs/guides/pretrained.md", 2),
           ("docs/guides/multitask.md", 0), ("docs/guides/multitask.md", 1)}


@pytest.mark.parametrize("page,i", sorted(set(all_blocks()) - CHECKED))
def test_every_other_block_runs_and_prints(page, i, capsys):
  run_block(page, i, capsys)


def test_readme_example_runs_and_learns(capsys):
  namespace = run_block("README.md", 0, capsys)
  summary = namespace["result"].summary()["loss"]
  assert set(summary) == {0, 1, 10}
  assert summary[10][0] < summary[0][0]  # adaptation helps after 200 meta-steps already
  assert np.isfinite(summary[1][0])


def test_prompts_guide_example_runs(capsys):
  namespace = run_block("docs/guides/prompts.md", 0, capsys)
  state, params, res = namespace["state"], namespace["params"], namespace["res"]
  acc = res.summary()["accuracy"]
  assert set(acc) == {0, 1, 5} and all(0.0 <= m <= 1.0 for m, _ in acc.values())
  assert not np.allclose(state.params["prompt"], params["prompt"])  # meta-learned
  np.testing.assert_array_equal(  # the encoder was frozen
      state.params["shared"]["token_embed"]["embedding"],
      params["shared"]["token_embed"]["embedding"])


def test_pretrained_guide_example_runs(capsys):
  data = env.data_dir()
  if not os.path.isfile(os.path.join(data, "all-MiniLM-L6-v2", "model.safetensors")):
    pytest.skip(f"the pretrained checkpoint is not under {data}")
  namespace = run_block("docs/guides/pretrained.md", 0, capsys)
  assert namespace["emb"].shape == (2, 384)
  np.testing.assert_allclose(np.linalg.norm(namespace["emb"], axis=-1), 1.0, rtol=1e-5)
  state, params, res = namespace["state"], namespace["params"], namespace["res"]
  acc = res.summary()["accuracy"]
  assert set(acc) == {0, 1} and acc[0][0] > 0.6  # far above chance (0.2) on held-out intents
  assert not np.allclose(state.params["prompt"], params["prompt"])  # meta-learned
  np.testing.assert_array_equal(state.params["shared"]["layers"]["query"]["kernel"],
                                params["shared"]["layers"]["query"]["kernel"])  # frozen


def test_language_model_guide_example_generates_scores_and_tunes(capsys):
  data = env.data_dir()
  if not os.path.isfile(os.path.join(data, "SmolLM2-135M-Instruct-Q4_1",
                                     "SmolLM2-135M-Instruct.Q4_1.gguf")):
    pytest.skip(f"SmolLM2 is not under {data}")
  namespace = run_block("docs/guides/pretrained.md", 1, capsys)
  lm, contexts, labels = namespace["lm"], namespace["contexts"], namespace["labels"]
  assert lm.generate_text(["The capital of France is"], max_new_tokens=3)[0].startswith(" Paris")
  np.testing.assert_array_equal(lm.score(contexts, labels).argmax(axis=1), [0, 1])
  assert float(namespace["loss"](namespace["soft"])) < float(namespace["value"])  # one step helps


def test_vision_guide_example_classifies_and_tunes_pad_and_film_prompts(capsys):
  data = env.data_dir()
  if not os.path.isdir(os.path.join(data, "efficientnet-lite0")):
    pytest.skip(f"efficientnet-lite0 is not under {data}")
  namespace = run_block("docs/guides/pretrained.md", 2, capsys)
  assert list(namespace["top5"]) == [400, 667, 652, 887, 906]  # timm's
  assert set(namespace["results"]) == {0, 5}
  for before, after in namespace["results"].values():  # three Adam steps lower each loss
    assert after < before
  assert namespace["m"].width == 1280


def test_balancing_guide_example_runs(capsys):
  namespace = run_block("docs/guides/multitask.md", 0, capsys)
  losses, w = np.asarray(namespace["losses"]), np.asarray(namespace["info"]["weights"])
  assert w.shape == (3,) and np.all(w > 0)
  first = [float(namespace["task_loss"]({"w": np.zeros(5)}, x, y))
           for x, y in zip(namespace["xs"], namespace["ys"])]
  assert np.all(losses < np.asarray(first))  # every task improved from the shared start


def test_multitask_trainer_guide_example_trains_every_task(capsys):
  namespace = run_block("docs/guides/multitask.md", 1, capsys)
  losses = np.asarray(namespace["metrics"]["task_losses"])      # [steps, T]
  assert losses.shape == (300, 3)
  assert np.all(losses[-1] < 0.05 * losses[0])                # every task learned, MGDA or not
  heads = namespace["state"].params["head"]
  leaves = jax.tree.leaves(heads)
  assert all(leaf.shape[0] == 3 for leaf in leaves)            # one head per task
  first = jax.tree.leaves(namespace["params"]["head"])
  assert all(not np.allclose(a, b) for a, b in zip(leaves, first))  # every head trained


def _tables(text: str) -> list:
  """Every markdown table of a page as a list of {header: cell} rows (the first column
  under each header name; bold marks dropped)."""
  tables, lines = [], text.splitlines() + [""]
  for i, line in enumerate(lines):
    if line.startswith("|") and lines[i + 1].startswith("|---") and not (
        i and lines[i - 1].startswith("|")):
      header = [c.strip() for c in line.strip("|").split("|")]
      rows, j = [], i + 2
      while lines[j].startswith("|"):
        cells = [c.strip().replace("**", "") for c in lines[j].strip("|").split("|")]
        rows.append({h: c for h, c in reversed(list(zip(header, cells)))})
        j += 1
      tables.append(rows)
  return tables


@pytest.mark.parametrize("readme", sorted(glob.glob(os.path.join(ROOT, "experiments", "*",
                                                                 "README.md"))))
def test_an_experiment_readme_table_repeats_its_docs_page_exactly(readme):
  # The headline table beside an experiment is a cut of its docs page's table: every row's
  # cells must be those of a row of the page, so the two cannot drift apart.
  text = open(readme).read()
  pages = set(re.findall(r"\]\((\.\./\.\./docs/results/[^)#]+)(?:#[^)]*)?\)", text))
  assert pages, f"{readme} links no docs/results page"
  docs_rows = [row for page in pages
               for table in _tables(open(os.path.join(os.path.dirname(readme), page)).read())
               for row in table]
  for table in _tables(text):
    for row in table:
      assert any(all(d.get(h) == c for h, c in row.items()) for d in docs_rows), (
          f"{os.path.relpath(readme, ROOT)}: no row of {sorted(pages)} reads {row}")
