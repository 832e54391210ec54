"""Multi-task balancing: how per-task losses and gradients become one update (LibMTL's methods).

Every method is a pure, jittable pair in the optax habit (`get(name, **hyperparameters)`):

  init(num_tasks) -> state
  update(task_losses [T], task_grads, state, key=None) -> (grads, new_state, info)

`task_grads` is a pytree whose leaves have a leading task axis [T, ...], computed by one
jax.vmap of jax.grad over the tasks (never a Python loop), and `grads` is the combined update
direction shaped like one task's gradient. `info["weights"]` [T] holds the task weights: for
the methods that reweight, grads == sum_i weights_i task_grads_i; the gradient-surgery methods
(PCGrad, GradVac) report the effective weights of the same form, so the weights can also be
applied to losses whose gradients were taken with respect to a shared representation
(MGDA-UB's trick) rather than the parameters.

Loss-only methods (`loss_only=True`: equal, fixed, RLW, uncertainty, DWA, FAMO) also offer
weights(task_losses, state, key) -> (weights, new_state, info), so a trainer can take one
gradient of sum_i weights_i L_i and never compute per-task gradients.

Conventions follow LibMTL (Lin & Zhang 2023) where it defines them: equal weighting sums the
losses (weights 1, not 1/T); CAGrad returns the mean gradient plus its correction, rescaled
by 1 / (1 + c^2). `info["weights"]` are always the weights of the *raw* task gradients as
given (grads == weights @ task_grads); LibMTL reports MGDA's weights of the normalised
gradients and IMTL's alpha of the loss-scaled ones, which are `info["alpha"]` here (they sum
to 1). The solvers (MGDA's min-norm point, CAGrad's and Nash-MTL's weights) run in JAX with
fixed iteration counts: no external convex solver, no host round trip.

What every method guarantees (tested for all of them):

  - `init(num_tasks, dtype=jnp.float32)`: the state's floating arrays take `dtype`; update
    computes in its inputs' dtype and returns the state in the dtypes it was given, so a
    float64 run (jax_enable_x64) and a float32 one both work and a scan's carry keeps its type.
  - Task losses of another rank than [T], or a task count other than init's, are errors at
    trace time, naming the method.
  - Non-finite losses or gradients give a non-finite update and weights (so a NaN guard
    sees them) and leave the state as it was; all-zero gradients (a converged task, a frozen
    branch) give a zero update with finite weights.
"""

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

EPS = 1e-8


class Balancer(NamedTuple):
  """A balancing method: see the module docstring."""

  init: Callable[[int], Any]
  update: Callable[..., tuple]
  loss_only: bool = False
  weights: Optional[Callable[..., tuple]] = None


def _flat(task_grads):
  """[T, D] matrix of the flattened per-task gradients, and unravel for one task's vector."""
  one = jax.tree.map(lambda g: g[0], task_grads)
  _, unravel = ravel_pytree(one)
  mat = jax.vmap(lambda t: ravel_pytree(t)[0])(task_grads)
  return mat, unravel


def _combine(weights, task_grads):
  return jax.tree.map(lambda g: jnp.tensordot(weights.astype(g.dtype), g, axes=1), task_grads)


def _is_float(a) -> bool:
  return jnp.issubdtype(jnp.result_type(a), jnp.floating)


def _cast(tree, dtype):
  return jax.tree.map(lambda a: a.astype(dtype) if _is_float(a) else a, tree)


def _num_tasks(state) -> Optional[int]:
  """T as the state records it: the leading axis of its per-task arrays (None if stateless)."""
  shaped = [a for a in jax.tree.leaves(state) if jnp.ndim(a) >= 1]
  return shaped[0].shape[0] if shaped else None


def _check(name, task_losses, task_grads, state):
  shape = jnp.shape(task_losses)
  if len(shape) != 1:
    raise ValueError(f"{name}: task_losses must be one scalar loss per task, shaped [T]; got "
                     f"{shape} (a [T, 1] loss: squeeze its last axis)")
  num_tasks = shape[0]
  expected = _num_tasks(state)
  if expected is not None and expected != num_tasks:
    raise ValueError(f"{name}: {num_tasks} task losses, but the state was built by "
                     f"init({expected})")
  if task_grads is not None:
    bad = [jnp.shape(g) for g in jax.tree.leaves(task_grads)
           if not jnp.shape(g) or jnp.shape(g)[0] != num_tasks]
    if bad:
      raise ValueError(f"{name}: every leaf of task_grads needs the leading task axis "
                       f"{num_tasks} of the losses; got shapes {bad[:3]}")


def _all_finite(*trees):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for t in trees
                            for a in jax.tree.leaves(t)]))


def _run(name, fn, task_losses, task_grads, state, key):
  """fn's result with the guarantees of the module docstring (task_grads None: loss-only)."""
  _check(name, task_losses, task_grads, state)
  dtype = jnp.result_type(*([task_losses] + jax.tree.leaves(task_grads)))
  if not jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.float32
  task_losses = jnp.asarray(task_losses, dtype)
  inputs = (task_losses,) if task_grads is None else (task_losses, task_grads)
  out, new_state, info = fn(*inputs, _cast(state, dtype), key)
  finite = _all_finite(*inputs)
  nan = lambda a: jnp.where(finite, a, jnp.nan) if _is_float(a) else a
  out, info = jax.tree.map(nan, out), jax.tree.map(nan, info)
  # A bad step leaves the state as it was, in the dtypes it came in.
  new_state = jax.tree.map(lambda n, o: jnp.where(finite, n.astype(o.dtype), o), new_state,
                           state)
  return out, new_state, info


def _balancer(name, init, update=None, weights=None) -> Balancer:
  """A Balancer from its raw functions: a loss-only method gives `weights`, and its update
  combines the given per-task gradients with them; a gradient method gives `update`."""
  if weights is not None:
    def update(task_losses, task_grads, state, key=None):
      w, state, info = weights(task_losses, state, key)
      return _combine(w, task_grads), state, info

  def guarded_update(task_losses, task_grads, state, key=None):
    return _run(name, update, task_losses, task_grads, state, key)

  def guarded_weights(task_losses, state, key=None):
    return _run(name, weights, task_losses, None, state, key)

  return Balancer(init, guarded_update, weights is not None,
                  None if weights is None else guarded_weights)


def _stateless(num_tasks, dtype=jnp.float32):
  return {}


# --- Loss-only methods ------------------------------------------------------------------------

def equal() -> Balancer:
  """Equal weights: sum_i L_i (LibMTL's EW)."""

  def weights(task_losses, state, key=None):
    w = jnp.ones_like(task_losses)
    return w, state, {"weights": w}

  return _balancer("equal", _stateless, weights=weights)


def fixed(weights) -> Balancer:
  """Fixed per-task weights."""
  given = [float(w) for w in weights] if hasattr(weights, "__len__") else None
  if not given or any(not w >= 0 for w in given):
    raise ValueError(f"fixed: weights must be a list of non-negative numbers, got {weights!r}")

  def init(num_tasks, dtype=jnp.float32):
    if num_tasks != len(given):
      raise ValueError(f"fixed: {len(given)} weights for {num_tasks} tasks")
    return {}

  def weights_fn(task_losses, state, key=None):
    if task_losses.shape[0] != len(given):
      raise ValueError(f"fixed: {len(given)} weights for {task_losses.shape[0]} task losses")
    w = jnp.asarray(given, task_losses.dtype)
    return w, state, {"weights": w}

  return _balancer("fixed", init, weights=weights_fn)


def rlw() -> Balancer:
  """Random loss weighting (Lin et al. 2022): weights softmax(z), z ~ N(0, I), each step."""

  def weights(task_losses, state, key=None):
    if key is None:
      raise ValueError("rlw draws random weights: pass key=")
    w = jax.nn.softmax(jax.random.normal(key, task_losses.shape, task_losses.dtype))
    return w, state, {"weights": w}

  return _balancer("rlw", _stateless, weights=weights)


def uncertainty(lr: float = 1e-3) -> Balancer:
  """Uncertainty weighting (Kendall et al. 2018), LibMTL's form: the objective
  sum_i L_i / (2 exp(s_i)) + s_i / 2 with learned s (initially -0.5), trained by Adam(lr)."""
  opt = optax.adam(lr)

  def init(num_tasks, dtype=jnp.float32):
    s = jnp.full((num_tasks,), -0.5, dtype)
    return {"s": s, "opt": opt.init(s)}

  def weights(task_losses, state, key=None):
    s = state["s"]
    w = 1.0 / (2.0 * jnp.exp(s))
    g = jax.grad(lambda s: jnp.sum(jax.lax.stop_gradient(task_losses) / (2 * jnp.exp(s))
                                   + s / 2))(s)
    upd, opt_state = opt.update(g, state["opt"], s)
    return w, {"s": optax.apply_updates(s, upd), "opt": opt_state}, {"weights": w, "s": s}

  return _balancer("uncertainty", init, weights=weights)


def dwa(temperature: float = 2.0, period: int = 1) -> Balancer:
  """Dynamic weight average (Liu et al. 2019): w = T softmax(r / temperature) with
  r_i = L_i(e-1) / L_i(e-2), the mean losses of the last two periods of `period` steps (an
  epoch in the paper); weights 1 for the first two periods."""
  if period < 1 or not temperature > 0:
    raise ValueError(f"dwa: period must be >= 1 and temperature > 0, got {period}, {temperature}")

  def init(num_tasks, dtype=jnp.float32):
    z = jnp.zeros((num_tasks,), dtype)
    return {"step": jnp.int32(0), "sum": z, "last": z, "before": z}

  def weights(task_losses, state, key=None):
    step = state["step"]
    ready = step >= 2 * period
    r = state["last"] / jnp.maximum(state["before"], EPS)
    n = task_losses.shape[0]
    w = jnp.where(ready, n * jax.nn.softmax(r / temperature), jnp.ones_like(task_losses))
    total = state["sum"] + jax.lax.stop_gradient(task_losses)
    end = (step + 1) % period == 0
    new = {"step": step + 1,
           "sum": jnp.where(end, 0.0, total),
           "last": jnp.where(end, total / period, state["last"]),
           "before": jnp.where(end, state["last"], state["before"])}
    return w, new, {"weights": w}

  return _balancer("dwa", init, weights=weights)


def famo(lr: float = 0.025, gamma: float = 1e-3, min_losses=None) -> Balancer:
  """FAMO (Liu et al. 2023): O(1) per step, losses only. The gradient of
  sum_i z_i log(L_i - m_i) / c with z = softmax(w), c = sum_i z_i / (L_i - m_i), i.e. weights
  z_i / (c (L_i - m_i)); w moves by Adam(lr) with L2 decay gamma (added to the gradient, as
  the authors' and LibMTL's `torch.optim.Adam(weight_decay=gamma)`, not AdamW's decoupled
  decay) along the softmax Jacobian applied to the log-loss decrease since the previous step
  (here measured on the next step's losses, as one jitted step allows)."""
  opt = optax.chain(optax.add_decayed_weights(gamma), optax.adam(lr))

  def init(num_tasks, dtype=jnp.float32):
    w = jnp.zeros((num_tasks,), dtype)
    m = (jnp.zeros((num_tasks,), dtype) if min_losses is None
         else jnp.asarray(min_losses, dtype))
    return {"w": w, "opt": opt.init(w), "prev": jnp.zeros((num_tasks,), dtype), "min": m,
            "started": jnp.bool_(False)}

  def weights(task_losses, state, key=None):
    losses = jax.lax.stop_gradient(task_losses)
    m = state["min"]
    # The logits' update from the change of log losses since the previous step.
    delta = jnp.log(state["prev"] - m + EPS) - jnp.log(losses - m + EPS)
    _, vjp = jax.vjp(jax.nn.softmax, state["w"])
    d = jnp.where(state["started"], vjp(delta)[0], 0.0)
    upd, opt_state = opt.update(d, state["opt"], state["w"])
    w_logits = jnp.where(state["started"], optax.apply_updates(state["w"], upd), state["w"])
    opt_state = jax.tree.map(lambda a, b: jnp.where(state["started"], a, b), opt_state,
                             state["opt"])
    z = jax.nn.softmax(w_logits)
    dist = losses - m + EPS
    c = jnp.sum(z / dist)
    wts = z / (c * dist)
    new = {"w": w_logits, "opt": opt_state, "prev": losses, "min": m, "started": jnp.bool_(True)}
    return wts, new, {"weights": wts, "z": z}

  return _balancer("famo", init, weights=weights)


# --- Gradient methods -------------------------------------------------------------------------

def _simplex_min_norm(gram, iters: int = 250):
  """argmin over the simplex of a^T gram a (MGDA's min-norm point): Frank-Wolfe with exact
  line search from the uniform point, then polished to the exact point of its face.

  Frank-Wolfe zig-zags where the solution lies on a face of the simplex (a task with weight
  0), leaving the weights off by ~1e-4 after thousands of steps; on the support it found,
  the point is the closed form a_S ∝ gram_S^-1 1, taken where it is feasible and no worse.
  """
  n = gram.shape[0]

  def body(_, a):
    ga = gram @ a
    t = jnp.argmin(ga)
    e = jax.nn.one_hot(t, n, dtype=a.dtype)
    # min over g in [0, 1] of |(1-g) u + g v|^2, u = G^T a, v = G^T e_t
    uu, uv, vv = a @ ga, ga[t], gram[t, t]
    denom = uu - 2 * uv + vv
    g = jnp.clip((uu - uv) / jnp.maximum(denom, EPS), 0.0, 1.0)
    return (1 - g) * a + g * e

  a = jax.lax.fori_loop(0, iters, body, jnp.full((n,), 1.0 / n, gram.dtype))

  def on_face(rel):
    support = a > rel * jnp.max(a)
    both = support[:, None] & support[None, :]
    system = jnp.where(both, gram, 0.0) + jnp.diag(jnp.where(support, 0.0, 1.0))
    x = jnp.where(support, jnp.linalg.solve(system, support.astype(gram.dtype)), 0.0)
    b = x / jnp.sum(x)
    ok = jnp.all(jnp.isfinite(b)) & jnp.all(b >= 0)
    return jnp.where(ok, b, a)

  candidates = jnp.stack([a] + [on_face(rel) for rel in (1e-1, 1e-2, 1e-3, 1e-4)])
  values = jnp.einsum("ci,ij,cj->c", candidates, gram, candidates)
  return candidates[jnp.argmin(values)]


def mgda(normalization: str = "none", iters: int = 250) -> Balancer:
  """MGDA (Sener & Koltun 2018): the min-norm point of the convex hull of the task gradients.
  normalization: LibMTL's gradient normalisation before the solve, "none" | "l2" | "loss" |
  "loss+". info["alpha"] is the min-norm point over the normalised gradients (LibMTL's
  weights); info["weights"] = alpha / scale applies to the raw gradients. One task with a
  zero gradient makes the min-norm point 0 (a Pareto-stationary point): the update is zero."""
  if normalization not in ("none", "l2", "loss", "loss+"):
    raise ValueError(f"mgda: normalization must be none, l2, loss or loss+, got {normalization!r}")

  def update(task_losses, task_grads, state, key=None):
    mat, unravel = _flat(task_grads)
    norms = jnp.linalg.norm(mat, axis=1)
    scale = {"none": jnp.ones_like(norms), "l2": norms + EPS, "loss": task_losses + EPS,
             "loss+": task_losses * norms + EPS}[normalization]
    mat_n = mat / scale[:, None]
    a = _simplex_min_norm(mat_n @ mat_n.T, iters)
    w = a / scale
    return unravel(w @ mat), state, {"weights": w, "alpha": a}

  return _balancer("mgda", _stateless, update)


def pcgrad() -> Balancer:
  """PCGrad (Yu et al. 2020): each task's gradient is projected, in a random order of the
  tasks, onto the normal plane of every gradient it conflicts with (negative inner product);
  the result is the sum of the projected gradients."""

  def update(task_losses, task_grads, state, key=None):
    if key is None:
      raise ValueError("pcgrad visits the tasks in a random order: pass key=")
    mat, unravel = _flat(task_grads)
    n = mat.shape[0]
    # Every projected gradient is coef @ mat, so its inner products come from the Gram matrix:
    # O(T) a projection instead of O(T D), and O(T^2 D + T^3) in all.
    gram = mat @ mat.T
    sq = jnp.diagonal(gram) + EPS

    def one(i, k):
      order = jax.random.permutation(k, n)

      def body(step, carry):
        coef = carry  # pc_i = coef @ mat
        j = order[step]
        dot = coef @ gram[:, j]
        return coef - jnp.where(dot < 0, dot / sq[j], 0.0) * jax.nn.one_hot(j, n, dtype=mat.dtype)

      return jax.lax.fori_loop(0, n, body, jax.nn.one_hot(i, n, dtype=mat.dtype))

    coefs = jax.vmap(one)(jnp.arange(n), jax.random.split(key, n))   # [T, T]
    w = jnp.sum(coefs, axis=0)
    return unravel(w @ mat), state, {"weights": w}

  return _balancer("pcgrad", _stateless, update)


def gradvac(beta: float = 0.5) -> Balancer:
  """Gradient vaccine (Wang et al. 2021), whole-model granularity: where the cosine between
  task i's (modified) gradient and task j's falls below an EMA target rho_ij, task j's gradient
  is added so the cosine reaches the target; rho_ij <- (1 - beta) rho_ij + beta cos."""

  def init(num_tasks, dtype=jnp.float32):
    return {"rho": jnp.zeros((num_tasks, num_tasks), dtype)}

  def update(task_losses, task_grads, state, key=None):
    if key is None:
      raise ValueError("gradvac visits the tasks in a random order: pass key=")
    mat, unravel = _flat(task_grads)
    n = mat.shape[0]
    gram = mat @ mat.T  # as PCGrad: inner products of coef @ mat from the Gram matrix
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))

    def one(i, k):
      order = jax.random.permutation(k, n)

      def body(step, carry):
        coef, rho_row = carry
        j = order[step]
        pc_norm = jnp.sqrt(jnp.maximum(coef @ gram @ coef, 0.0))
        cos = coef @ gram[:, j] / (pc_norm * norms[j] + EPS)
        target = rho_row[j]
        w = pc_norm * (target * jnp.sqrt(jnp.maximum(1 - cos ** 2, 0.0))
                       - cos * jnp.sqrt(jnp.maximum(1 - target ** 2, 0.0))) / (
            norms[j] * jnp.sqrt(jnp.maximum(1 - target ** 2, 0.0)) + EPS)
        skip = j == i
        coef = coef + jnp.where((cos < target) & ~skip, w, 0.0) * jax.nn.one_hot(
            j, n, dtype=mat.dtype)
        rho_row = rho_row.at[j].set(jnp.where(skip, rho_row[j],
                                              (1 - beta) * rho_row[j] + beta * cos))
        return coef, rho_row

      return jax.lax.fori_loop(0, n, body, (jax.nn.one_hot(i, n, dtype=mat.dtype),
                                            state["rho"][i]))

    coefs, rho = jax.vmap(one)(jnp.arange(n), jax.random.split(key, n))
    w = jnp.sum(coefs, axis=0)
    return unravel(w @ mat), {"rho": rho}, {"weights": w}

  return _balancer("gradvac", init, update)


def cagrad(c: float = 0.5, rescale: int = 1, iters: int = 500) -> Balancer:
  """CAGrad (Liu et al. 2021): d = g0 + (sqrt(phi) / |g_w|) g_w, where g0 is the mean gradient,
  phi = c^2 |g0|^2, and w minimises w^T G g0 + sqrt(phi) |G^T w| over the simplex (solved
  by exponentiated gradient); rescale 0: d, 1: d / (1 + c^2), 2: d / (1 + c). c = 0 is the
  mean gradient."""
  if rescale not in (0, 1, 2) or c < 0:
    raise ValueError(f"cagrad: c must be >= 0 and rescale 0, 1 or 2, got {c}, {rescale}")

  def update(task_losses, task_grads, state, key=None):
    mat, unravel = _flat(task_grads)
    n = mat.shape[0]
    gram = mat @ mat.T
    scale = jnp.mean(jnp.abs(gram)) + EPS     # the solve is scale-free: work at unit scale
    a = gram / scale
    # Clamped at 0: with near-opposite gradients (a Pareto-stationary point) rounding makes
    # these quadratic forms slightly negative, and their square roots NaN.
    g0_norm = jnp.sqrt(jnp.maximum(jnp.mean(a), 0.0) + EPS)
    k = c * g0_norm
    b = jnp.full((n,), 1.0 / n, mat.dtype)

    def objective(w):
      return w @ a @ b + k * jnp.sqrt(jnp.maximum(w @ a @ w, 0.0) + EPS)

    def body(_, w):
      g = jax.grad(objective)(w)
      w = w * jnp.exp(-0.5 * (g - jnp.max(g)))
      return w / jnp.sum(w)

    w = jax.lax.fori_loop(0, iters, body, b)
    gw = w @ mat
    gw_norm = jnp.linalg.norm(gw)
    # sqrt(phi) / |g_w|; 0 where every gradient vanishes (then the correction does too).
    lam = jnp.where(gw_norm > 0, c * jnp.sqrt(jnp.maximum(jnp.mean(gram), 0.0))
                    / jnp.where(gw_norm > 0, gw_norm, 1.0), 0.0)
    coef = b + lam * w
    coef = coef / {0: 1.0, 1: 1.0 + c ** 2, 2: 1.0 + c}[rescale]
    return unravel(coef @ mat), state, {"weights": coef, "w": w}

  return _balancer("cagrad", _stateless, update)


def imtl(lr: float = 1e-3) -> Balancer:
  """IMTL (Liu et al. 2021), as LibMTL: losses scaled as exp(s_i) L_i - s_i (IMTL-L, s trained
  by Adam(lr)), then IMTL-G's weights alpha (info["alpha"], summing to 1, LibMTL's weights of
  the scaled losses' gradients) under which the combined gradient has equal projections on
  every task's unit gradient; info["weights"] = alpha exp(s) apply to the raw gradients.
  The linear system is solved by least squares, so a task with a zero gradient (no
  direction to project on) gets no weight instead of a singular solve; with every gradient
  zero the weights are uniform and the update zero."""
  opt = optax.adam(lr)

  def init(num_tasks, dtype=jnp.float32):
    s = jnp.zeros((num_tasks,), dtype)
    return {"s": s, "opt": opt.init(s)}

  def update(task_losses, task_grads, state, key=None):
    mat, unravel = _flat(task_grads)
    n = mat.shape[0]
    s = state["s"]
    g = jnp.exp(s)[:, None] * mat                       # gradients of the scaled losses
    u = g / (jnp.linalg.norm(g, axis=1, keepdims=True) + EPS)
    d = g[:1] - g[1:]
    uu = u[:1] - u[1:]
    # alpha_rest solves alpha_rest (d uu^T) = g_0 uu^T; lstsq: the minimum-norm solution,
    # finite where d uu^T is singular.
    alpha_rest = jnp.linalg.lstsq((d @ uu.T).T, uu @ g[0])[0]
    alpha = jnp.concatenate([1 - jnp.sum(alpha_rest, keepdims=True), alpha_rest])
    alpha = jnp.where(jnp.any(mat != 0), alpha, jnp.full((n,), 1.0 / n, mat.dtype))
    grad_s = jnp.exp(s) * jax.lax.stop_gradient(task_losses) - 1.0
    upd, opt_state = opt.update(grad_s, state["opt"], s)
    w = alpha * jnp.exp(s)
    return (unravel(w @ mat), {"s": optax.apply_updates(s, upd), "opt": opt_state},
            {"weights": w, "alpha": alpha})

  return _balancer("imtl", init, update)


def nash_mtl(iters: int = 20, max_norm: float = 1.0) -> Balancer:
  """Nash-MTL (Navon et al. 2022): weights alpha > 0 solving G G^T alpha = 1 / alpha, the raw
  system of the reference code (nash-mtl's weight_methods.py and LibMTL, whose constraint is
  alpha_i (G G^T alpha)_i >= 1: their normalisation by |G G^T|_F only conditions the solver).
  Here the normalised system M a = 1 / a, M = G G^T / |G G^T|_F, is solved, the minimiser of
  the strictly convex 1/2 a^T M a - sum log a, by damped Newton steps that keep every a
  positive, warm-started from the previous step; alpha = a / sqrt(|G G^T|_F). Where no
  solution exists (M singular, at a Pareto-stationary point, or every gradient zero) the
  previous alpha is kept. As the reference code, the combined gradient's norm is clipped to
  `max_norm` (0: off): alpha grows as 1 / |g| where gradients are small, and one spike would
  otherwise swamp Adam's second moment; the reported weights include the clip."""
  if max_norm < 0:
    raise ValueError(f"nash_mtl: max_norm must be >= 0 (0 turns the clip off), got {max_norm}")

  def init(num_tasks, dtype=jnp.float32):
    return {"alpha": jnp.ones((num_tasks,), dtype)}

  def update(task_losses, task_grads, state, key=None):
    mat, unravel = _flat(task_grads)
    gram = mat @ mat.T
    norm = jnp.linalg.norm(gram)
    ok_norm = norm > 0
    root = jnp.sqrt(jnp.where(ok_norm, norm, 1.0))
    m = gram / jnp.where(ok_norm, norm, 1.0)

    def body(_, a):
      grad = m @ a - 1.0 / a
      hess = m + jnp.diag(1.0 / a ** 2)
      step = jnp.linalg.solve(hess, grad)
      # The largest step in (0, 1] that keeps every alpha positive (with a margin).
      ratio = jnp.where(step > 0, 0.9 * a / jnp.maximum(step, EPS), jnp.inf)
      t = jnp.minimum(1.0, jnp.min(ratio))
      return a - t * step

    previous = state["alpha"]
    start = jnp.where(jnp.all(previous > 0), previous * root, 1.0)
    a = jax.lax.fori_loop(0, iters, body, start)
    # At a Pareto-stationary point (the gradients' combination can vanish) M is singular and
    # the problem has no solution: a runs off to infinity along M's null space. Keep the
    # previous alpha then, as the reference code does when its solver fails.
    solved = ok_norm & jnp.all(jnp.isfinite(a)) & jnp.all(a > 0)
    alpha = jnp.where(solved, a / root, previous)
    residual = jnp.linalg.norm(alpha * (gram @ alpha) - 1.0)
    w = alpha
    if max_norm:
      combined = jnp.linalg.norm(alpha @ mat)
      w = alpha * jnp.minimum(1.0, max_norm / jnp.where(combined > 0, combined, 1.0))
    return unravel(w @ mat), {"alpha": alpha}, {"weights": w, "residual": residual}

  return _balancer("nash_mtl", init, update)


def aligned_mtl() -> Balancer:
  """Aligned-MTL (Senushkin et al. 2023): with G G^T = V diag(l) V^T, B = sqrt(l_min)
  V diag(l)^-1/2 V^T (over the non-zero eigenvalues) makes the task gradients' rows of B G
  orthonormal up to the scale sqrt(l_min); the weights are B's column sums (zero where every
  gradient vanishes)."""

  def update(task_losses, task_grads, state, key=None):
    mat, unravel = _flat(task_grads)
    gram = mat @ mat.T
    lam, vec = jnp.linalg.eigh(gram)
    tol = jnp.max(lam) * gram.shape[0] * jnp.finfo(gram.dtype).eps
    keep = lam > tol
    lam_min = jnp.where(jnp.any(keep), jnp.min(jnp.where(keep, lam, jnp.inf)), 0.0)
    inv_sqrt = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, lam, 1.0)), 0.0)
    b = jnp.sqrt(lam_min) * (vec * inv_sqrt[None, :]) @ vec.T
    w = jnp.sum(b, axis=0)
    return unravel(w @ mat), state, {"weights": w}

  return _balancer("aligned_mtl", _stateless, update)


def gradnorm(alpha: float = 1.5, lr: float = 1e-3, warmup: int = 1) -> Balancer:
  """GradNorm (Chen et al. 2018), LibMTL's form: weights T softmax(s); s is trained by Adam(lr)
  on sum_i | |w_i g_i| - mean_j |w_j g_j| r_i^alpha |, r_i the loss ratio L_i / L_i(0) over
  its mean (the target held constant). As LibMTL's first epoch, the first `warmup` steps
  weigh the tasks equally (weights 1, s untouched) and L(0) is their mean loss."""
  if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
    raise ValueError(f"gradnorm: warmup must be a positive integer of steps, got {warmup!r}")
  opt = optax.adam(lr)

  def init(num_tasks, dtype=jnp.float32):
    s = jnp.ones((num_tasks,), dtype)
    return {"s": s, "opt": opt.init(s), "initial": jnp.zeros((num_tasks,), dtype),
            "step": jnp.int32(0)}

  def update(task_losses, task_grads, state, key=None):
    mat, unravel = _flat(task_grads)
    n = mat.shape[0]
    losses = jax.lax.stop_gradient(task_losses)
    warming = state["step"] < warmup
    initial = jnp.where(warming, state["initial"] + losses / warmup, state["initial"])
    norms = jnp.linalg.norm(mat, axis=1)

    def objective(s):
      w = n * jax.nn.softmax(s)
      g = w * norms
      ratio = losses / (initial + EPS)
      r = ratio / jnp.mean(ratio)
      target = jax.lax.stop_gradient(jnp.mean(g) * r ** alpha)
      return jnp.sum(jnp.abs(g - target))

    w = jnp.where(warming, jnp.ones((n,), mat.dtype), n * jax.nn.softmax(state["s"]))
    upd, opt_state = opt.update(jax.grad(objective)(state["s"]), state["opt"], state["s"])
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(warming, b, a), new, old)
    new = {"s": keep(optax.apply_updates(state["s"], upd), state["s"]),
           "opt": keep(opt_state, state["opt"]), "initial": initial, "step": state["step"] + 1}
    return unravel(w @ mat), new, {"weights": w}

  return _balancer("gradnorm", init, update)


METHODS = {
    "equal": equal, "fixed": fixed, "rlw": rlw, "uncertainty": uncertainty, "dwa": dwa,
    "famo": famo, "mgda": mgda, "pcgrad": pcgrad, "gradvac": gradvac, "cagrad": cagrad,
    "imtl": imtl, "nash_mtl": nash_mtl, "aligned_mtl": aligned_mtl, "gradnorm": gradnorm,
}


def get(name: str, **hyperparameters) -> Balancer:
  """A balancing method by name (see METHODS), e.g. get("cagrad", c=0.4)."""
  if name not in METHODS:
    raise ValueError(f"unknown balancing method {name!r}; known: {sorted(METHODS)}")
  try:
    return METHODS[name](**hyperparameters)
  except TypeError as e:
    raise ValueError(f"{name}: {e}") from None
