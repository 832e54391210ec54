"""In-context demonstrations: an episode's support set rendered into the context.

In-context learning, a soft prompt and both together are then the same call: the rendered
contexts go to `CausalLM.score` (or `scores_fn`) with or without a prompt.
"""

from typing import Sequence

DEFAULT_TEMPLATE = "Utterance: {text}\nIntent:{label}"


def render(template: str, text: str, label: str = "") -> str:
  """One example: `template` with {text} and {label} filled; the query leaves the label
  empty, so its context ends where a candidate label would start."""
  for field in ("{text}", "{label}"):
    if field not in template:
      raise ValueError(f"template must contain {field}, got {template!r}")
  return template.replace("{text}", text).replace("{label}", label)


def in_context(queries: Sequence[str], demonstrations: Sequence[tuple] = (), *,
               template: str = DEFAULT_TEMPLATE, label_prefix: str = " ",
               separator: str = "\n\n", instruction: str = "") -> list:
  """The contexts of `queries`, each after the same demonstrations.

  demonstrations: (text, label name) pairs, e.g. an episode's support set; each is rendered
  with label_prefix + label (the form `score` gives candidates, so a demonstration's label
  and a candidate tokenize alike). instruction: an optional first line (a zero-shot
  instruction naming the candidates, say).

  >>> in_context(["play jazz"], [("wake me at 7", "alarm")], template="{text} ->{label}")
  ['wake me at 7 -> alarm\\n\\nplay jazz ->']
  """
  if isinstance(queries, str):
    raise TypeError("in_context: pass a list of queries, not a single string")
  shown = [render(template, t, label_prefix + l) for t, l in demonstrations]
  head = ([instruction] if instruction else []) + shown
  return [separator.join(head + [render(template, q)]) for q in queries]
