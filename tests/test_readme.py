"""The code of the README and of the docs' guides must run as written."""

import os
import re

import numpy as np
from experiments._lib import env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Where each example lives, in the order the tests below take them.
PAGES = ("README.md", "docs/guides/prompts.md", "docs/guides/pretrained.md",
         "docs/guides/multitask.md")


def python_blocks():
  """The first python block of each page of PAGES."""
  blocks = []
  for page in PAGES:
    with open(os.path.join(ROOT, page)) as f:
      found = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    assert found, f"{page} has no python example"
    blocks.append(found[0])
  return blocks


def test_readme_example_runs_and_learns(capsys):
  blocks = python_blocks()
  assert blocks, "README has no python example"
  namespace = {}
  exec(compile(blocks[0], "README.md", "exec"), namespace)
  summary = namespace["result"].summary()["loss"]
  assert set(summary) == {0, 1, 10}
  assert summary[10][0] < summary[0][0]  # adaptation helps after 200 meta-steps already
  assert np.isfinite(summary[1][0])


def test_readme_prompt_example_runs():
  blocks = python_blocks()
  assert len(blocks) >= 2, "README lost its prompt example"
  namespace = {}
  exec(compile(blocks[1], "README.md", "exec"), namespace)
  state, params, res = namespace["state"], namespace["params"], namespace["res"]
  acc = res.summary()["accuracy"]
  assert set(acc) == {0, 1, 5} and all(0.0 <= m <= 1.0 for m, _ in acc.values())
  assert not np.allclose(state.params["prompt"], params["prompt"])  # meta-learned
  np.testing.assert_array_equal(  # the encoder was frozen
      state.params["shared"]["token_embed"]["embedding"],
      params["shared"]["token_embed"]["embedding"])


def test_readme_pretrained_example_runs():
  data = env.data_dir()
  if not os.path.isfile(os.path.join(data, "all-MiniLM-L6-v2", "model.safetensors")):
    import pytest
    pytest.skip(f"the pretrained checkpoint is not under {data}")
  blocks = python_blocks()
  assert len(blocks) >= 3, "README lost its pretrained-encoder example"
  namespace = {}
  exec(compile(blocks[2], "README.md", "exec"), namespace)
  assert namespace["emb"].shape == (2, 384)
  np.testing.assert_allclose(np.linalg.norm(namespace["emb"], axis=-1), 1.0, rtol=1e-5)
  state, params, res = namespace["state"], namespace["params"], namespace["res"]
  acc = res.summary()["accuracy"]
  assert set(acc) == {0, 1} and acc[0][0] > 0.6  # far above chance (0.2) on held-out intents
  assert not np.allclose(state.params["prompt"], params["prompt"])  # meta-learned
  np.testing.assert_array_equal(state.params["shared"]["layers"]["query"]["kernel"],
                                params["shared"]["layers"]["query"]["kernel"])  # frozen


def test_readme_balancing_example_runs():
  blocks = python_blocks()
  assert len(blocks) >= 4, "README lost its multi-task balancing example"
  namespace = {}
  exec(compile(blocks[3], "README.md", "exec"), namespace)
  losses, w = np.asarray(namespace["losses"]), np.asarray(namespace["info"]["weights"])
  assert w.shape == (3,) and np.all(w > 0)
  first = [float(namespace["task_loss"]({"w": np.zeros(5)}, x, y))
           for x, y in zip(namespace["xs"], namespace["ys"])]
  assert np.all(losses < np.asarray(first))  # every task improved from the shared start
