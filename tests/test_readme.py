"""The README's code must run as written."""

import os
import re

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_blocks():
  with open(os.path.join(ROOT, "README.md")) as f:
    return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_readme_example_runs_and_learns(capsys):
  blocks = python_blocks()
  assert blocks, "README has no python example"
  namespace = {}
  exec(compile(blocks[0], "README.md", "exec"), namespace)
  summary = namespace["result"].summary()["loss"]
  assert set(summary) == {0, 1, 10}
  assert summary[10][0] < summary[0][0]  # adaptation helps after 200 meta-steps already
  assert np.isfinite(summary[1][0])
