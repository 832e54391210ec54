"""Heads for few-shot classification over features: prototypes and Proto-MAML.

A linear head is a plain Net (mtpjax.nn.linear_head). The two heads here need the task's support
set, so they wrap a feature model (compose(backbone, None, prompt)) and reach the support
through meta_learner's `task_repr`:

- prototype_classifier: logits from the distance to the support class means, recomputed from
  the support at the current (adapted) parameters in every loss, with a temperature that is
  fixed or meta-learned (role "head"). In the inner loop the support is scored against its own
  prototypes, so adapting a prompt pulls each class together and the classes apart.
- proto_maml (Triantafillou et al. 2020): a linear head initialised from the prototypes of the
  support at the meta-parameters (gradients flow through that initialisation), then adapted.
  The head role holds the offset from that initialisation, zero at the start of every task
  (algorithm reset=("head",)), so the initial head is exactly the prototype classifier.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from mtpjax._src import losses
from mtpjax.nn import _compose as nets
from mtpjax._src import types

DISTANCES = ("cosine", "sqeuclidean")


def class_means(features: types.Array, labels: types.Array, ways: int) -> types.Array:
  """Prototypes [ways, d]: the mean feature of each class (zero for a class with no example)."""
  onehot = jax.nn.one_hot(labels, ways, dtype=features.dtype)                 # [n, ways]
  counts = jnp.sum(onehot, axis=0)                                            # [ways]
  return (onehot.T @ features) / jnp.maximum(counts, 1.0)[:, None]


def _unit(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def prototype_logits(features: types.Array, prototypes: types.Array, *, distance: str,
                     scale) -> types.Array:
  """[n, ways]: scale * cos(f, c) or -scale * ||f - c||^2."""
  if distance == "cosine":
    return scale * (_unit(features) @ _unit(prototypes).T)
  sq = (jnp.sum(features * features, axis=-1)[:, None] - 2.0 * features @ prototypes.T
        + jnp.sum(prototypes * prototypes, axis=-1)[None, :])
  return -scale * sq


def _check(ways, distance, scale):
  if isinstance(ways, bool) or not isinstance(ways, int) or ways <= 0:
    raise ValueError(f"ways must be a positive integer, got {ways!r}")
  if distance not in DISTANCES:
    raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
  if not scale > 0:
    raise ValueError(f"scale (inverse temperature) must be > 0, got {scale!r}")


def _features_fn(model: nets.Model, prompt_repr):
  def features(params, x, r):
    return model.apply(params, x) if r is None else model.apply(params, x, task_repr=r)

  def repr_fn(params, support):
    return None if prompt_repr is None else prompt_repr(params, support)

  return features, repr_fn


class FewShotHead(NamedTuple):
  """init(key, x) -> params with a "head" role; task_repr(params, support) for meta_learner;
  logits(params, x, task_repr) -> [n, ways]; loss_fn / accuracy_fn(params, batch, task_repr)."""

  init: Callable[..., types.Params]
  task_repr: Callable[[types.Params, types.Batch], Any]
  logits: Callable[..., types.Array]
  loss_fn: Callable[..., types.Array]
  accuracy_fn: Callable[..., types.Array]


def _losses(logits):
  def loss_fn(params, batch, task_repr=None):
    return losses.cross_entropy(logits(params, batch.x, task_repr, batch), batch.y)

  def accuracy_fn(params, batch, task_repr=None):
    return losses.accuracy(logits(params, batch.x, task_repr, batch), batch.y)

  return loss_fn, accuracy_fn


def _need(task_repr, name):
  if task_repr is None:
    raise ValueError(f"{name}: the loss needs the task's support set; build the learner with "
                     f"meta_learner(..., task_repr=head.task_repr)")


def prototype_classifier(model: nets.Model, ways: int, *, distance: str = "cosine",
                         scale: float = 10.0, learn_scale: bool = False,
                         prompt_repr: Optional[Callable] = None) -> FewShotHead:
  """A prototype head over a feature model, its prototypes computed at the current parameters.

  Args:
    model: a feature model, e.g. compose(encoder, None, prompt); apply(params, x) -> [n, d].
    ways: classes per task (labels in [0, ways)).
    distance: "cosine" (scale * cosine similarity) or "sqeuclidean" (-scale * squared distance,
      prototypical networks).
    scale: the inverse temperature; with learn_scale it is the initial value of a meta-learned
      `params["head"]["log_scale"]`.
    prompt_repr: optional prompt_repr(params, support) passed to model.apply as task_repr (a
      prompt generated from the support set).

  >>> import mtpjax as mj
  >>> pc = prototype_classifier(mj.compose(mj.identity(2)), 2, distance="sqeuclidean")
  >>> support = types.Batch(jnp.array([[0.0, 0.0], [4.0, 4.0]]), jnp.array([0, 1]))
  >>> prototypes = pc.task_repr({"shared": {}}, support)
  >>> float(pc.accuracy_fn({"shared": {}}, support, task_repr=prototypes))
  1.0

  With a prompted encoder, `meta_learner(pc.loss_fn, opt, algorithm=get_algorithm(
  "prompt_maml", outer=("prompt",)), task_repr=pc.task_repr, ...)` meta-learns the prompt
  under the frozen encoder.
  """
  _check(ways, distance, scale)
  features, repr_fn = _features_fn(model, prompt_repr)

  def init(key, x):
    params = model.init(key, x)
    if learn_scale:
      params[types.HEAD] = {"log_scale": jnp.log(jnp.asarray(scale, jnp.float32))}
    return params

  def task_repr(params, support):
    return {"support": support, "prompt": repr_fn(params, support)}

  def logits(params, x, r, batch=None):
    _need(r, "prototype_classifier")
    support = r["support"]
    z_s = features(params, support.x, r["prompt"])                          # [n_s, d]
    # In the inner loop the scored batch is the support itself: embed it once.
    z = z_s if batch is support else features(params, x, r["prompt"])      # [n, d]
    s = jnp.exp(params[types.HEAD]["log_scale"]) if learn_scale else scale
    return prototype_logits(z, class_means(z_s, support.y, ways), distance=distance, scale=s)

  return FewShotHead(init, task_repr, logits, *_losses(logits))


def proto_maml(model: nets.Model, ways: int, *, distance: str = "sqeuclidean",
               scale: float = 1.0, prompt_repr: Optional[Callable] = None) -> FewShotHead:
  """Proto-MAML: a linear head initialised from the support prototypes, then adapted.

  With the prototypes c_k of the support at the meta-parameters, the initial head is
  sqeuclidean: W = 2 scale c, b = -scale ||c||^2 on features z, whose logits differ from
  -scale ||z - c||^2 by a per-example constant (same softmax and predictions);
  cosine: W = scale c / ||c||, b = 0 on z / ||z||: exactly the cosine prototype logits.
  params["head"] = {"w": [d, ways], "b": [ways]} is the offset from it: use an algorithm with
  reset=("head",) and "head" among the fast roles, e.g.
  get_algorithm("maml", fast=("prompt", "head"), reset=("head",)).
  """
  _check(ways, distance, scale)
  features, repr_fn = _features_fn(model, prompt_repr)

  def init(key, x):
    params = model.init(key, x)
    d = jax.eval_shape(model.apply, params, x).shape[-1]
    params[types.HEAD] = {"w": jnp.zeros((d, ways)), "b": jnp.zeros((ways,))}
    return params

  def _z(params, x, r):
    z = features(params, x, r)
    return _unit(z) if distance == "cosine" else z

  def task_repr(params, support):
    r = repr_fn(params, support)
    c = class_means(features(params, support.x, r), support.y, ways)        # [ways, d]
    if distance == "cosine":
      w0, b0 = scale * _unit(c).T, jnp.zeros((ways,), c.dtype)
    else:
      w0, b0 = 2.0 * scale * c.T, -scale * jnp.sum(c * c, axis=-1)
    return {"w0": w0, "b0": b0, "prompt": r}

  def logits(params, x, r, batch=None):
    del batch
    _need(r, "proto_maml")
    head = params[types.HEAD]
    return _z(params, x, r["prompt"]) @ (r["w0"] + head["w"]) + (r["b0"] + head["b"])[None]

  return FewShotHead(init, task_repr, logits, *_losses(logits))
