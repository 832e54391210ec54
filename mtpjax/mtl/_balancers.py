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
losses (weights 1, not 1/T); MGDA's and IMTL's weights sum to 1; CAGrad returns the mean
gradient plus its correction, rescaled by 1 / (1 + c^2). The solvers (MGDA's min-norm point,
CAGrad's and Nash-MTL's weights) run in JAX with fixed iteration counts: no external convex
solver, no host round trip.
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


def _from_weights(weights_fn, init) -> Balancer:
  """A loss-only method: update combines the given per-task gradients with its weights."""

  def update(task_losses, task_grads, state, key=None):
    w, state, info = weights_fn(task_losses, state, key)
    return _combine(w, task_grads), state, info

  return Balancer(init, update, True, weights_fn)


# --- Loss-only methods ------------------------------------------------------------------------

def equal() -> Balancer:
  """Equal weights: sum_i L_i (LibMTL's EW)."""

  def weights(task_losses, state, key=None):
    w = jnp.ones_like(task_losses)
    return w, state, {"weights": w}

  return _from_weights(weights, lambda num_tasks: {})


def fixed(weights) -> Balancer:
  """Fixed per-task weights."""
  fixed_w = jnp.asarray(weights, jnp.float32)
  if fixed_w.ndim != 1 or not bool(jnp.all(fixed_w >= 0)):
    raise ValueError(f"fixed: weights must be a list of non-negative numbers, got {weights!r}")

  def init(num_tasks):
    if num_tasks != fixed_w.shape[0]:
      raise ValueError(f"fixed: {fixed_w.shape[0]} weights for {num_tasks} tasks")
    return {}

  def weights_fn(task_losses, state, key=None):
    return fixed_w, state, {"weights": fixed_w}

  return _from_weights(weights_fn, init)


def rlw() -> Balancer:
  """Random loss weighting (Lin et al. 2022): weights softmax(z), z ~ N(0, I), each step."""

  def weights(task_losses, state, key=None):
    if key is None:
      raise ValueError("rlw draws random weights: pass key=")
    w = jax.nn.softmax(jax.random.normal(key, task_losses.shape))
    return w, state, {"weights": w}

  return _from_weights(weights, lambda num_tasks: {})


def uncertainty(lr: float = 1e-3) -> Balancer:
  """Uncertainty weighting (Kendall et al. 2018), LibMTL's form: the objective
  sum_i L_i / (2 exp(s_i)) + s_i / 2 with learned s (initially -0.5), trained by Adam(lr)."""
  opt = optax.adam(lr)

  def init(num_tasks):
    s = jnp.full((num_tasks,), -0.5, jnp.float32)
    return {"s": s, "opt": opt.init(s)}

  def weights(task_losses, state, key=None):
    s = state["s"]
    w = 1.0 / (2.0 * jnp.exp(s))
    g = jax.grad(lambda s: jnp.sum(jax.lax.stop_gradient(task_losses) / (2 * jnp.exp(s))
                                   + s / 2))(s)
    upd, opt_state = opt.update(g, state["opt"], s)
    return w, {"s": optax.apply_updates(s, upd), "opt": opt_state}, {"weights": w, "s": s}

  return _from_weights(weights, init)


def dwa(temperature: float = 2.0, period: int = 1) -> Balancer:
  """Dynamic weight average (Liu et al. 2019): w = T softmax(r / temperature) with
  r_i = L_i(e-1) / L_i(e-2), the mean losses of the last two periods of `period` steps (an
  epoch in the paper); weights 1 for the first two periods."""
  if period < 1 or not temperature > 0:
    raise ValueError(f"dwa: period must be >= 1 and temperature > 0, got {period}, {temperature}")

  def init(num_tasks):
    z = jnp.zeros((num_tasks,), jnp.float32)
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

  return _from_weights(weights, init)


def famo(lr: float = 0.025, gamma: float = 1e-3, min_losses=None) -> Balancer:
  """FAMO (Liu et al. 2023): O(1) per step, losses only. The gradient of
  sum_i z_i log(L_i - m_i) / c with z = softmax(w), c = sum_i z_i / (L_i - m_i), i.e. weights
  z_i / (c (L_i - m_i)); w moves by Adam(lr, weight decay gamma) along the softmax Jacobian
  applied to the log-loss decrease since the previous step (here measured on the next step's
  losses, as one jitted step allows)."""
  opt = optax.adamw(lr, weight_decay=gamma)

  def init(num_tasks):
    w = jnp.zeros((num_tasks,), jnp.float32)
    m = jnp.zeros((num_tasks,)) if min_losses is None else jnp.asarray(min_losses, jnp.float32)
    return {"w": w, "opt": opt.init(w), "prev": jnp.zeros((num_tasks,)), "min": m,
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

  return _from_weights(weights, init)


# --- Gradient methods -------------------------------------------------------------------------

def _simplex_min_norm(gram, iters: int = 250):
  """argmin over the simplex of a^T gram a (MGDA's min-norm point), by Frank-Wolfe with exact
  line search from the uniform point."""
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

  return jax.lax.fori_loop(0, iters, body, jnp.full((n,), 1.0 / n, gram.dtype))


def mgda(normalization: str = "none", iters: int = 250) -> Balancer:
  """MGDA (Sener & Koltun 2018): the min-norm point of the convex hull of the task gradients.
  normalization: LibMTL's gradient normalisation before the solve, "none" | "l2" | "loss" |
  "loss+" (the weights returned apply to the normalised gradients' directions)."""
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
    return unravel(w @ mat), state, {"weights": w}

  return Balancer(lambda num_tasks: {}, update)


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
        return coef - jnp.where(dot < 0, dot / sq[j], 0.0) * jax.nn.one_hot(j, n)

      return jax.lax.fori_loop(0, n, body, jax.nn.one_hot(i, n))

    coefs = jax.vmap(one)(jnp.arange(n), jax.random.split(key, n))   # [T, T]
    w = jnp.sum(coefs, axis=0)
    return unravel(w @ mat), state, {"weights": w}

  return Balancer(lambda num_tasks: {}, update)


def gradvac(beta: float = 0.5) -> Balancer:
  """Gradient vaccine (Wang et al. 2021), whole-model granularity: where the cosine between
  task i's (modified) gradient and task j's falls below an EMA target rho_ij, task j's gradient
  is added so the cosine reaches the target; rho_ij <- (1 - beta) rho_ij + beta cos."""

  def init(num_tasks):
    return {"rho": jnp.zeros((num_tasks, num_tasks), jnp.float32)}

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
        coef = coef + jnp.where((cos < target) & ~skip, w, 0.0) * jax.nn.one_hot(j, n)
        rho_row = rho_row.at[j].set(jnp.where(skip, rho_row[j],
                                              (1 - beta) * rho_row[j] + beta * cos))
        return coef, rho_row

      return jax.lax.fori_loop(0, n, body, (jax.nn.one_hot(i, n), state["rho"][i]))

    coefs, rho = jax.vmap(one)(jnp.arange(n), jax.random.split(key, n))
    w = jnp.sum(coefs, axis=0)
    return unravel(w @ mat), {"rho": rho}, {"weights": w}

  return Balancer(init, update)


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
    b = jnp.full((n,), 1.0 / n)

    def objective(w):
      return w @ a @ b + k * jnp.sqrt(jnp.maximum(w @ a @ w, 0.0) + EPS)

    def body(_, w):
      g = jax.grad(objective)(w)
      w = w * jnp.exp(-0.5 * (g - jnp.max(g)))
      return w / jnp.sum(w)

    w = jax.lax.fori_loop(0, iters, body, b)
    gw = w @ mat
    lam = c * jnp.sqrt(jnp.maximum(jnp.mean(gram), 0.0) + EPS) / (jnp.linalg.norm(gw) + EPS)
    coef = b + lam * w
    coef = coef / {0: 1.0, 1: 1.0 + c ** 2, 2: 1.0 + c}[rescale]
    return unravel(coef @ mat), state, {"weights": coef, "w": w}

  return Balancer(lambda num_tasks: {}, update)


def imtl(lr: float = 1e-3) -> Balancer:
  """IMTL (Liu et al. 2021), as LibMTL: losses scaled as exp(s_i) L_i - s_i (IMTL-L, s trained
  by Adam(lr)), then IMTL-G's weights alpha (summing to 1) under which the combined gradient
  has equal projections on every task's unit gradient."""
  opt = optax.adam(lr)

  def init(num_tasks):
    s = jnp.zeros((num_tasks,), jnp.float32)
    return {"s": s, "opt": opt.init(s)}

  def update(task_losses, task_grads, state, key=None):
    mat, unravel = _flat(task_grads)
    s = state["s"]
    g = jnp.exp(s)[:, None] * mat                       # gradients of the scaled losses
    u = g / (jnp.linalg.norm(g, axis=1, keepdims=True) + EPS)
    d = g[:1] - g[1:]
    uu = u[:1] - u[1:]
    alpha_rest = (g[0] @ uu.T) @ jnp.linalg.inv(d @ uu.T)
    alpha = jnp.concatenate([1 - jnp.sum(alpha_rest, keepdims=True), alpha_rest])
    grad_s = jnp.exp(s) * jax.lax.stop_gradient(task_losses) - 1.0
    upd, opt_state = opt.update(grad_s, state["opt"], s)
    w = alpha * jnp.exp(s)
    return (unravel(w @ mat), {"s": optax.apply_updates(s, upd), "opt": opt_state},
            {"weights": w, "alpha": alpha})

  return Balancer(init, update)


def nash_mtl(iters: int = 20, max_norm: float = 1.0) -> Balancer:
  """Nash-MTL (Navon et al. 2022): weights alpha > 0 solving M alpha = 1 / alpha, where
  M = G G^T / |G G^T|_F (the reference code's normalisation, whose alpha it applies to the raw
  gradients; the raw system's solution is alpha / sqrt(|G G^T|_F), the same direction),
  found as the minimiser of the strictly convex 1/2 a^T M a - sum log a by damped Newton
  steps that keep every alpha positive, warm-started from the previous step's alpha. Where no
  solution exists (M singular, at a Pareto-stationary point) the previous alpha is kept.
  As the reference code, the combined gradient's norm is clipped to `max_norm` (0: off): alpha
  grows as 1 / |g| where gradients are small, and one spike would otherwise swamp Adam's
  second moment; the reported weights include the clip."""
  if max_norm < 0:
    raise ValueError(f"nash_mtl: max_norm must be >= 0 (0 turns the clip off), got {max_norm}")

  def init(num_tasks):
    return {"alpha": jnp.ones((num_tasks,), jnp.float32)}

  def update(task_losses, task_grads, state, key=None):
    mat, unravel = _flat(task_grads)
    gram = mat @ mat.T
    norm = jnp.linalg.norm(gram) + EPS
    m = gram / norm

    def body(_, a):
      grad = m @ a - 1.0 / a
      hess = m + jnp.diag(1.0 / a ** 2)
      step = jnp.linalg.solve(hess, grad)
      # The largest step in (0, 1] that keeps every alpha positive (with a margin).
      ratio = jnp.where(step > 0, 0.9 * a / jnp.maximum(step, EPS), jnp.inf)
      t = jnp.minimum(1.0, jnp.min(ratio))
      return a - t * step

    start = jnp.where(jnp.all(state["alpha"] > 0), state["alpha"], 1.0)
    alpha = jax.lax.fori_loop(0, iters, body, start)
    # At a Pareto-stationary point (the gradients' combination can vanish) M is singular and
    # the problem has no solution: alpha runs off to infinity along M's null space. Keep the
    # previous alpha then, as the reference code does when its solver fails.
    alpha = jnp.where(jnp.all(jnp.isfinite(alpha)) & jnp.all(alpha > 0), alpha, start)
    residual = jnp.linalg.norm(m @ alpha - 1.0 / alpha)
    w = alpha
    if max_norm:
      w = alpha * jnp.minimum(1.0, max_norm / (jnp.linalg.norm(alpha @ mat) + EPS))
    return unravel(w @ mat), {"alpha": alpha}, {"weights": w, "residual": residual}

  return Balancer(init, update)


def aligned_mtl() -> Balancer:
  """Aligned-MTL (Senushkin et al. 2023): with G G^T = V diag(l) V^T, B = sqrt(l_min)
  V diag(l)^-1/2 V^T (over the non-zero eigenvalues) makes the task gradients' rows of B G
  orthonormal up to the scale sqrt(l_min); the weights are B's column sums."""

  def update(task_losses, task_grads, state, key=None):
    mat, unravel = _flat(task_grads)
    gram = mat @ mat.T
    lam, vec = jnp.linalg.eigh(gram)
    tol = jnp.max(lam) * gram.shape[0] * jnp.finfo(gram.dtype).eps
    keep = lam > tol
    lam_min = jnp.min(jnp.where(keep, lam, jnp.inf))
    inv_sqrt = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, lam, 1.0)), 0.0)
    b = jnp.sqrt(lam_min) * (vec * inv_sqrt[None, :]) @ vec.T
    w = jnp.sum(b, axis=0)
    return unravel(w @ mat), state, {"weights": w}

  return Balancer(lambda num_tasks: {}, update)


def gradnorm(alpha: float = 1.5, lr: float = 1e-3) -> Balancer:
  """GradNorm (Chen et al. 2018), LibMTL's form: weights T softmax(s); s is trained by Adam(lr)
  on sum_i | |w_i g_i| - mean_j |w_j g_j| r_i^alpha |, r_i the loss ratio L_i / L_i(0) over
  its mean (the target held constant); the first step records L(0)."""
  opt = optax.adam(lr)

  def init(num_tasks):
    s = jnp.ones((num_tasks,), jnp.float32)
    return {"s": s, "opt": opt.init(s), "initial": jnp.zeros((num_tasks,)),
            "started": jnp.bool_(False)}

  def update(task_losses, task_grads, state, key=None):
    mat, unravel = _flat(task_grads)
    n = mat.shape[0]
    losses = jax.lax.stop_gradient(task_losses)
    initial = jnp.where(state["started"], state["initial"], losses)
    norms = jnp.linalg.norm(mat, axis=1)

    def objective(s):
      w = n * jax.nn.softmax(s)
      g = w * norms
      ratio = losses / (initial + EPS)
      r = ratio / jnp.mean(ratio)
      target = jax.lax.stop_gradient(jnp.mean(g) * r ** alpha)
      return jnp.sum(jnp.abs(g - target))

    w = n * jax.nn.softmax(state["s"])
    upd, opt_state = opt.update(jax.grad(objective)(state["s"]), state["opt"], state["s"])
    new = {"s": optax.apply_updates(state["s"], upd), "opt": opt_state, "initial": initial,
           "started": jnp.bool_(True)}
    return unravel(w @ mat), new, {"weights": w}

  return Balancer(init, update)


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
