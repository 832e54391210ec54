"""Knowledge distillation (Hinton et al. 2015): a student matches a teacher's softened outputs.

  loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, labels)

The T^2 keeps the soft term's gradient on the scale of the hard one as T grows (the soft
gradients shrink as 1/T^2). The teacher's logits are constants (stop_gradient): a teacher may
be the multi-task model, or the mean of an ensemble's probabilities (pass log-probabilities as
`teacher_logits`; softmax is shift-invariant so either works).
"""

from typing import Optional

import jax
import jax.numpy as jnp

from mtpjax._src import losses, types


def soft_kl(student_logits: types.Array, teacher_logits: types.Array,
            temperature: float = 1.0) -> types.Array:
  """Mean over examples of KL(softmax(teacher / T) || softmax(student / T)), [n, c] each."""
  if jnp.shape(student_logits) != jnp.shape(teacher_logits):
    raise ValueError(f"soft_kl: student logits {jnp.shape(student_logits)} and teacher logits "
                     f"{jnp.shape(teacher_logits)} must have the same shape")
  if not temperature > 0:
    raise ValueError(f"soft_kl: temperature must be > 0, got {temperature!r}")
  t = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_logits) / temperature, axis=-1)
  s = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  return jnp.mean(jnp.sum(jnp.exp(t) * (t - s), axis=-1))


def distillation_loss(student_logits: types.Array, teacher_logits: types.Array,
                      labels: Optional[types.Array] = None, *, temperature: float = 2.0,
                      alpha: float = 0.5) -> types.Array:
  """alpha * T^2 * soft_kl + (1 - alpha) * cross_entropy(student, labels).

  Args:
    student_logits: [n, c].
    teacher_logits: [n, c].
    labels: [n] integer labels for the hard term; None with alpha=1 (no labels needed).
    temperature: T > 0, softens both distributions.
    alpha: weight of the soft term in [0, 1].

  >>> import jax.numpy as jnp
  >>> logits = jnp.array([[2.0, 0.0, -1.0]])
  >>> float(distillation_loss(logits, logits, None, temperature=4.0, alpha=1.0))  # same: 0
  0.0
  """
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"distillation_loss: alpha must be in [0, 1], got {alpha!r}")
  soft = temperature ** 2 * soft_kl(student_logits, teacher_logits, temperature)
  if alpha == 1.0:
    return soft
  if labels is None:
    raise ValueError("distillation_loss: alpha < 1 needs the hard labels")
  return alpha * soft + (1.0 - alpha) * losses.cross_entropy(student_logits, labels)
