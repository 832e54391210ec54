"""The inner loop: SGD on the fast roles of one task's parameters, as a lax.scan."""

from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from mtpjax._src import types


# Up to this many inner steps, "auto" traces the steps without a loop.
UNROLL_AUTO_MAX_STEPS = 2

# remat=True recomputes everything (jax.checkpoint's default); a name picks one of JAX's
# policies for what the backward pass may keep instead of recomputing.
REMAT_POLICIES = ("nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable",
                  "everything_saveable")


def remat_policy(remat: Union[bool, str, Callable]) -> Optional[Callable]:
  """The jax.checkpoint policy for `remat` (True: None, JAX's default, which saves nothing);
  a clear error for an unknown name."""
  if remat is True:
    return None
  if callable(remat):
    return remat
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat must be True, False, a jax.checkpoint policy or one of "
                     f"{list(REMAT_POLICIES)}, got {remat!r}")
  return getattr(jax.checkpoint_policies, remat)


def split_roles(params: types.Params, roles: Sequence[str]):
  """(selected, rest): two role-keyed dicts that merge back into `params`."""
  selected = {r: params[r] for r in roles if r in params}
  rest = {r: v for r, v in params.items() if r not in selected}
  return selected, rest


def check_roles(params: types.Params, roles: Sequence[str], what: str) -> None:
  missing = [r for r in roles if r not in params]
  if missing:
    raise ValueError(f"{what}: roles {missing} are not in the parameters, which have roles "
                     f"{sorted(params)}")


def adapt(loss_fn: types.LossFn, params: types.Params, batch: types.Batch, *,
          fast: Sequence[str], steps: int, lr: Union[float, types.ArrayTree],
          first_order: bool = False, remat: Union[bool, str, Callable] = False,
          unroll: Union[int, bool, str] = "auto",
          eval_fn: Optional[Callable[[types.Params], types.ArrayTree]] = None):
  """Adapts the `fast` roles of one task's parameters by `steps` SGD steps on `batch`.

  Args:
    loss_fn: loss_fn(params, batch) -> scalar.
    params: role-keyed parameters; only roles in `fast` change.
    batch: the task's support set (one task, no task axis).
    fast: the roles that adapt, e.g. ("prompt",) for CAVIA or ("head",) for ANIL.
    steps: static number of SGD steps; 0 returns `params` unchanged.
    lr: a scalar, or a pytree shaped like the fast roles (Meta-SGD's per-parameter rates).
    first_order: stop the gradient through the inner gradients (first-order MAML): the
      adapted parameters still depend on the initial ones through the identity path.
    remat: recompute each step's forward pass in the backward pass instead of storing it
      (jax.checkpoint on the scan body: XLA does not remat inside a scan by itself). True
      recomputes everything; a name in REMAT_POLICIES (or a jax.checkpoint_policies
      function) keeps what the policy saves, e.g. "dots_saveable" keeps the matmul outputs.
    unroll: "auto" (default): True for steps <= 2, else 1. An int is lax.scan's unroll
      factor; True traces the steps one after another with no loop at all. (lax.scan with
      unroll=True still lowers a length-1 scan to an HLO while loop, which costs ~10% of a
      1-step sinusoid MAML meta-step on the CPU.)
    eval_fn: optional eval_fn(params) -> pytree recorded before every step and after the last,
      giving a trajectory of steps + 1 entries (used by evaluation curves).

  Returns:
    (adapted_params, aux) with aux = {"support_loss": [steps] loss before each step} and,
    with eval_fn, aux["trajectory"]: eval_fn at steps 0..steps, leading axis steps + 1.

  >>> import jax.numpy as jnp
  >>> loss_fn = lambda p, b: jnp.mean((p["head"] * b.x - b.y) ** 2)   # one weight, y = 3x
  >>> support = types.Batch(jnp.ones((4,)), 3 * jnp.ones((4,)))
  >>> adapted, aux = adapt(loss_fn, {"head": jnp.zeros(()), "shared": jnp.ones(())}, support,
  ...                      fast=("head",), steps=5, lr=0.25)
  >>> round(float(adapted["head"]), 3), float(adapted["shared"]), aux["support_loss"].shape
  (2.906, 1.0, (5,))
  """
  if steps < 0:
    raise ValueError(f"adapt: steps must be >= 0, got {steps}")
  fast_params, slow_params = split_roles(params, fast)
  if isinstance(lr, (int, float)):
    lr_tree = jax.tree.map(lambda p: jnp.asarray(lr, p.dtype), fast_params)
  else:
    lr_tree = {r: lr[r] for r in fast_params}

  def inner_loss(fp):
    return loss_fn({**slow_params, **fp}, batch)

  grad_fn = jax.value_and_grad(inner_loss)
  if remat:
    grad_fn = jax.checkpoint(grad_fn, policy=remat_policy(remat))

  def body(fp, _):
    loss, grads = grad_fn(fp)
    if first_order:
      grads = jax.lax.stop_gradient(grads)
    new_fp = jax.tree.map(lambda p, g, a: p - a * g, fp, grads, lr_tree)
    out = {"support_loss": loss}
    if eval_fn is not None:
      out["trajectory"] = eval_fn({**slow_params, **fp})
    return new_fp, out

  if unroll == "auto":
    unroll = True if steps <= UNROLL_AUTO_MAX_STEPS else 1
  if unroll is True and steps > 0:
    outs = []
    for _ in range(steps):
      fast_params, out = body(fast_params, None)
      outs.append(out)
    aux = jax.tree.map(lambda *o: jnp.stack(o), *outs)
  else:
    fast_params, aux = jax.lax.scan(body, fast_params, None, length=steps, unroll=unroll)
  adapted = {**slow_params, **fast_params}
  if eval_fn is not None:
    last = eval_fn(adapted)
    aux["trajectory"] = jax.tree.map(lambda t, l: jnp.concatenate([t, l[None]], axis=0),
                                     aux["trajectory"], last)
  return adapted, aux
