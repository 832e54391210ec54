"""The workdir: its lock, atomic JSON files, the metrics log, and the config comparison that
guards a resumed run."""

import contextlib
import json
import os
import warnings

# Fields that may change between a checkpoint and its resumption without altering the run
# (xla_flags changes how XLA compiles the same computation, so only float rounding;
# eval_batch_size (and eval_chunk_utterances, which sizes it) changes how many test tasks are
# vmapped at once, so only memory: the tasks are the same whatever the chunk size). Lowering
# eval_batch_size is how a run whose evaluation ran out of memory is finished from its last
# checkpoint.
# test_data (the text experiments) names an extra evaluation file: it changes which rows are
# added to results.json, never the training.
COSMETIC_FIELDS = ("progress", "xla_flags", "eval_batch_size", "eval_chunk_utterances",
                   "test_data")


class ConfigMismatch(ValueError):
  pass


def read_jsonl(path, max_step=None):
  """The metric rows of metrics.jsonl up to max_step, skipping damaged lines with a warning.

  A line is damaged when it is not UTF-8, not JSON (e.g. cut short by a crash), not an object,
  or has no integer "step". Damaged lines are dropped (the file is rewritten from the rows
  kept), so one bad line never blocks a resume.
  """
  if not os.path.exists(path):
    return []
  rows, damaged = [], []
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8").strip()
        if not line:
          continue
        row = json.loads(line)
      except (UnicodeDecodeError, json.JSONDecodeError):
        damaged.append(number)
        continue
      step = row.get("step") if isinstance(row, dict) else None
      if isinstance(step, bool) or not isinstance(step, int):
        damaged.append(number)
        continue
      if max_step is None or step <= max_step:
        rows.append(row)
  if damaged:
    shown = ", ".join(map(str, damaged[:20])) + (" ..." if len(damaged) > 20 else "")
    warnings.warn(f"{path}: skipped {len(damaged)} damaged line(s) (not UTF-8, not JSON, or "
                  f"without an integer step): line {shown}")
  return rows


class WorkdirLocked(RuntimeError):
  pass


@contextlib.contextmanager
def workdir_lock(workdir: str):
  """Holds an exclusive lock on workdir for the run (workdir/.lock: pid and host).

  The lock is an flock, which the kernel releases when its process dies, so a lock file left
  by a killed run is taken over (with a warning naming the old owner). A second run on a
  workdir in use exits at once, naming the owner.
  """
  import fcntl
  import socket
  path = os.path.join(workdir, ".lock")
  f = open(path, "a+")
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    f.seek(0)
    owner = f.read().strip() or "another process"
    f.close()
    raise WorkdirLocked(f"{workdir} is in use by {owner}; wait for it to finish, stop it, or "
                        f"use another --workdir") from None
  f.seek(0)
  previous = f.read().strip()
  if previous:
    warnings.warn(f"{workdir}: taking over the lock left by {previous}, which is no longer "
                  f"running")
  f.seek(0)
  f.truncate()
  f.write(f"pid {os.getpid()} on host {socket.gethostname()}")
  f.flush()
  try:
    yield
  finally:
    f.seek(0)
    f.truncate()
    f.flush()
    fcntl.flock(f, fcntl.LOCK_UN)
    f.close()


def check_workdir(workdir: str) -> None:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir {workdir} is a file, not a directory; pass a directory path "
                     f"(it is created if absent)")


def write_json(path, obj):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)  # atomic: readers never see half a file


def config_diff(old: dict, new: dict) -> list[str]:
  keys = sorted((set(old) | set(new)) - set(COSMETIC_FIELDS))
  return [f"{k}: checkpoint {old.get(k)!r} vs now {new.get(k)!r}" for k in keys
          if old.get(k) != new.get(k)]


def merged_rows(path: str, rows: list, field: str) -> list:
  """The rows of an earlier results.json whose `field` differs from every new row's, then
  the new rows."""
  if not os.path.exists(path):
    return rows
  try:
    with open(path) as f:
      old = json.load(f).get("rows", [])
  except (OSError, ValueError, AttributeError):
    warnings.warn(f"{path} is damaged; its earlier rows are not kept")
    return rows
  new = {r.get(field) for r in rows}
  return [r for r in old if isinstance(r, dict) and r.get(field) not in new] + rows
