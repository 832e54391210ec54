"""Benchmarks: scripts that print tables and save figures (not tests)."""

import json
import os
import subprocess
import sys
import tempfile


def script_steps_per_sec(module: str, *flags: str) -> float:
  """Runs an experiment script as a user does (`python -m module --workdir TMP flags...`) and
  returns the meta-steps/s it reports in results.json: compilation excluded, its logging and
  checkpoints included."""
  with tempfile.TemporaryDirectory() as workdir:
    out = subprocess.run([sys.executable, "-m", module, f"--workdir={workdir}",
                          "--config.progress=false", *flags], capture_output=True, text=True)
    if out.returncode:
      raise RuntimeError(f"{module} failed:\n{out.stderr[-3000:]}")
    with open(os.path.join(workdir, "results.json")) as f:
      return json.load(f)["meta_steps_per_sec"]
