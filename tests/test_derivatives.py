"""derivatives: h(x, y) = ½d(x, y)² + ψ(y) differentiated in the tangent frame.

Proven here, in float64 on S² and T²:

* `frame_derivatives` / `local_derivatives` return the gradient and Hessian
  at v = 0 of v ↦ h(x, exp_y(E_y v)): against central finite differences of
  that function (with the distance computed independently, by arccos on S²),
  in tape and in symbolic (`tf.gradients`) mode;
* the symbolic mode's closed-form assembly (ψ's ambient derivatives, the
  second fundamental form and the closed-form Hessian of ½d²) equals the
  tape pull-back on spheres, tori, products and powers, in float32 and
  float64, at y = x too; so is the tape-mode gradient (the IFT step's),
  with the same derivatives in x and ψ's variables; a manifold without
  closed forms falls back;
* `local_hvp` and `local_ambient_gradient` (the CG back-end's closed
  forms) equal the pull-back `hvp` and `ambient_gradient`;
* `inverse_jacobian` (Jacobi fields, T (D₁ + D₂ Hess ψ)) is the tape
  Jacobian of `inverse_map` in frames, with the same log-det gradients;
* the Riemannian closed forms: on S² with ψ(y) = a·y, grad h = −log_y x +
  P_y a and Hess h = H_c − (a·y) I, where H_c = Hess ½d(x, ·)² has
  eigenvalue 1 along the geodesic and t cot t across it (Sec. 4.3); on T²
  with a separable ψ, Hess h = I + diag ψ'';
* a rotated frame E R gives Rᵀ g and Rᵀ H R (the derivatives are those of
  the frame that is passed);
* `hvp` is E H Eᵀ u (the dense frame Hessian lifted by the frame), plus
  (I − P) u with `identity_on_normals`, and is symmetric;
* `ambient_gradient` is E g: tangent (y·g = 0 on S²) and equal to finite
  differences along the frame;
* `inverse_map` is exp_y(P_y ∇ψ(y)) computed by hand, satisfies the
  c-transform optimality condition grad_y h(f⁻¹(y), y) = 0, and is NaN
  exactly where ψ is not finite;
* `call_potential` squeezes [..., 1] outputs and refuses wrong shapes and
  dtypes.
"""

import numpy as np
import pytest
import tensorflow as tf

import tfp_ircpm as ircpm

M = ircpm.manifolds
deriv = ircpm.derivatives

S2 = M.Sphere(2)
T2 = M.Torus(2)


def _mlp(manifold, seed=0, scale=0.3):
  return ircpm.potentials.MLP(manifold, (8, 8), output_scale=scale, seed=seed,
                              dtype=tf.float64)


def _sphere_pairs(n, seed, low=0.3, high=2.6):
  """x, y on S² with d(x, y) in [low, high] (arccos is well conditioned)."""
  rng = np.random.default_rng(seed)
  y = rng.normal(size=(n, 3))
  y /= np.linalg.norm(y, axis=-1, keepdims=True)
  u = rng.normal(size=(n, 3))
  u -= np.sum(u * y, -1, keepdims=True) * y
  u /= np.linalg.norm(u, axis=-1, keepdims=True)
  t = rng.uniform(low, high, size=(n, 1))
  x = np.cos(t) * y + np.sin(t) * u
  return x, y


def _torus_pairs(n, seed):
  """x, y on T² with |wrap(x − y)_i| <= 2.5 < π (away from the cut locus)."""
  rng = np.random.default_rng(seed)
  y = rng.uniform(0., 2. * np.pi, size=(n, 2))
  x = np.mod(y + rng.uniform(-2.5, 2.5, size=(n, 2)), 2. * np.pi)
  return x, y


def _h_reference(manifold, psi, x, points):
  """h(x, points) with the distance computed without the library's sq_dist."""
  if isinstance(manifold, M.Sphere):
    cos = np.clip(np.sum(x * points, -1), -1., 1.)
    sq = np.arccos(cos) ** 2
  else:
    d = np.mod(points - x + np.pi, 2. * np.pi) - np.pi
    sq = np.sum(d * d, -1)
  return 0.5 * sq + psi(tf.constant(points)).numpy()


def _fd_frame_derivatives(manifold, psi, x, y, eps=1e-4):
  """Central differences of v ↦ h(x, exp_y(E_y v)) at v = 0: g [N, d], H."""
  frame = manifold.tangent_frame(tf.constant(y)).numpy()
  dim = manifold.dim

  def f(v):
    pts = manifold.expmap(tf.constant(y),
                          tf.constant(np.einsum('nad,nd->na', frame, v)))
    return _h_reference(manifold, psi, x, pts.numpy())

  n = x.shape[0]
  basis = np.eye(dim)
  g = np.zeros((n, dim))
  h = np.zeros((n, dim, dim))
  for i in range(dim):
    ei = np.broadcast_to(eps * basis[i], (n, dim))
    g[:, i] = (f(ei) - f(-ei)) / (2. * eps)
    for j in range(dim):
      ej = np.broadcast_to(eps * basis[j], (n, dim))
      h[:, i, j] = (f(ei + ej) - f(ei - ej) - f(-ei + ej) + f(-ei - ej)) / (
          4. * eps * eps)
  return g, h


@pytest.mark.parametrize('name', ['S2', 'T2'])
def test_frame_derivatives_match_finite_differences(name):
  manifold = S2 if name == 'S2' else T2
  pairs = _sphere_pairs if name == 'S2' else _torus_pairs
  x, y = pairs(12, seed=1)
  psi = _mlp(manifold, seed=2)
  value, g, hess, frame = deriv.local_derivatives(manifold, psi, tf.constant(x),
                                                  tf.constant(y))
  g_fd, h_fd = _fd_frame_derivatives(manifold, psi, x, y)
  np.testing.assert_allclose(value.numpy(), _h_reference(manifold, psi, x, y),
                             atol=1e-12)
  np.testing.assert_allclose(g.numpy(), g_fd, atol=1e-7)
  np.testing.assert_allclose(hess.numpy(), h_fd, atol=1e-5)
  np.testing.assert_allclose(frame.numpy(),
                             manifold.tangent_frame(tf.constant(y)).numpy())
  # The finite differences see a non-trivial ψ: H is not the ψ = 0 Hessian.
  _, _, hess0, _ = deriv.local_derivatives(manifold, lambda z: 0. * z[..., 0],
                                           tf.constant(x), tf.constant(y))
  assert np.max(np.abs(hess.numpy() - hess0.numpy())) > 1e-2
  # frame_derivatives of any fn is the same computation on h(x, ·).
  fd = deriv.frame_derivatives(manifold, deriv.cost_fn(manifold, psi,
                                                       tf.constant(x)),
                               tf.constant(y))
  np.testing.assert_allclose(fd[2].numpy(), hess.numpy(), atol=1e-14)
  _, g_only, none, _ = deriv.frame_derivatives(
      manifold, deriv.cost_fn(manifold, psi, tf.constant(x)), tf.constant(y),
      with_hessian=False)
  assert none is None
  np.testing.assert_allclose(g_only.numpy(), g.numpy(), atol=1e-14)


# Every family whose closed forms compose: spheres, tori, products, powers.
CLOSED_FORM_MANIFOLDS = {
    'S2': S2, 'S3': M.Sphere(3), 'T2': T2,
    'T1xS2': M.Product([M.Torus(1), S2]),
    'S2pow3': M.Power(S2, 3), 'T1pow2': M.Power(M.Torus(1), 2)}


def _pairs_on(manifold, n, seed, dtype, radius=2.5):
  """x, y with d(x, y) up to `radius` per factor, and y = x in the first row
  (where ½d² has its removable singularity)."""
  x = manifold.random_uniform(n, tf.float64, seed=seed)
  v = manifold.proju(x, tf.random.stateless_normal(
      x.shape, [seed, 1], dtype=tf.float64))
  v = v * tf.random.stateless_uniform([n, 1], [seed, 2], 0., 1.,
                                      dtype=tf.float64)
  scale = radius / tf.maximum(tf.norm(v, axis=-1, keepdims=True), radius)
  y = manifold.projx(manifold.expmap(x, v * scale))
  y = tf.concat([x[:1], y[1:]], 0)
  return tf.cast(x, dtype), tf.cast(y, dtype)


@pytest.mark.parametrize('dtype,atol', [(tf.float64, 1e-12),
                                        (tf.float32, 2e-5)])
@pytest.mark.parametrize('name', ['S2', 'S3', 'T2', 'T1xS2', 'S2pow3',
                                  'T1pow2'])
def test_symbolic_mode_equals_tape_mode(name, dtype, atol):
  """The solver's symbolic derivatives, assembled from the manifolds'
  closed forms (`half_sq_dist_derivatives`, `exp_second_order_term`), equal
  the tape derivatives of the pull-back through exp and d."""
  manifold = CLOSED_FORM_MANIFOLDS[name]
  x, y = _pairs_on(manifold, 16, seed=3, dtype=dtype)
  psi = ircpm.potentials.MLP(manifold, (8, 8), output_scale=0.5, seed=4,
                             dtype=dtype)
  assert manifold.half_sq_dist_derivatives(x, y, manifold.tangent_frame(y)
                                           ) is not None

  @tf.function
  def symbolic(x, y):
    return deriv.local_derivatives(manifold, psi, x, y, symbolic=True)[:3]

  @tf.function
  def gradient_only(x, y):
    return deriv.local_derivatives(manifold, psi, x, y, symbolic=True,
                                   with_hessian=False)[:3]

  tape = deriv.local_derivatives(manifold, psi, x, y)[:3]
  scale = 1. + np.max(np.abs(tape[2].numpy()))
  for a, b in zip(symbolic(x, y), tape):
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=atol * scale)
  value, g, none = gradient_only(x, y)
  assert none is None
  np.testing.assert_allclose(g.numpy(), tape[1].numpy(), atol=atol * scale)
  # At y = x the distance term is I and the gradient is ψ's alone.
  d_value, d_grad, d_hess = manifold.half_sq_dist_derivatives(
      x[:1], x[:1], manifold.tangent_frame(x[:1]))
  np.testing.assert_allclose(d_value.numpy(), 0., atol=atol)
  np.testing.assert_allclose(d_grad.numpy(), 0., atol=atol)
  np.testing.assert_allclose(d_hess.numpy()[0], np.eye(manifold.dim),
                             atol=atol)


@pytest.mark.parametrize('name', ['S2', 'T2', 'T1xS2', 'S2pow3'])
def test_tape_mode_gradient_is_closed_form_and_differentiable(name):
  """The IFT step's grad_y h (tape mode, no Hessian) comes from the closed
  forms; its derivatives in x and in ψ's variables equal those of the
  pull-back's gradient."""
  manifold = CLOSED_FORM_MANIFOLDS[name]
  x, y = _pairs_on(manifold, 12, seed=7, dtype=tf.float64)
  psi = ircpm.potentials.MLP(manifold, (8, 8), output_scale=0.5, seed=8,
                             dtype=tf.float64)
  frame = manifold.tangent_frame(y)
  weights = tf.random.stateless_normal([12, manifold.dim], [7, 9],
                                       dtype=tf.float64)

  def derivatives_of(fn):
    with tf.GradientTape() as tape:
      tape.watch(x)
      g = fn()
      loss = tf.reduce_sum(weights * g)
    return [g] + tape.gradient(loss, [x] + list(psi.trainable_variables))

  closed = derivatives_of(lambda: deriv.local_derivatives(
      manifold, psi, x, y, with_hessian=False, frame=frame)[1])
  pulled = derivatives_of(lambda: deriv.frame_derivatives(
      manifold, deriv.cost_fn(manifold, psi, x), y, with_hessian=False,
      frame=frame)[1])
  # Only x's tangent directions are defined: the normal component of the
  # x-gradient depends on how d² and log are extended off M.
  closed[1], pulled[1] = manifold.proju(x, closed[1]), manifold.proju(
      x, pulled[1])
  for a, b in zip(closed, pulled):
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-11)


def _tape_inverse_jacobian(manifold, psi, y):
  """E_xᵀ J E_y from the ambient tape Jacobian of `inverse_map`."""
  y = manifold.projx(y)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(y)
    x = deriv.inverse_map(manifold, psi, y)[0]
  jac = tf.linalg.matmul(tape.batch_jacobian(x, y), manifold.tangent_frame(y))
  return tf.linalg.matmul(manifold.tangent_frame(x), jac, transpose_a=True), x


@pytest.mark.parametrize('scale', [0., 1.5, 8.])
@pytest.mark.parametrize('name', ['S2', 'S3', 'T2', 'T1xS2', 'S2pow3'])
def test_inverse_jacobian_from_jacobi_fields(name, scale):
  """T (D₁ + D₂ Hess ψ) (`Manifold.exp_jacobi_fields`) is the tape Jacobian
  of f⁻¹ = exp(grad ψ) in frames, and log|det| has the same gradients in y
  and ψ's variables: at the identity (ψ = 0), and with geodesic steps of
  0.5-1.6 rad (scale 8, the closed-form branches of every coefficient)."""
  manifold = CLOSED_FORM_MANIFOLDS[name]
  psi = ircpm.potentials.MLP(manifold, (8, 8), output_scale=scale or 1.,
                             zero_output=not scale, seed=0, dtype=tf.float64)
  y = manifold.random_uniform(24, tf.float64, seed=1)

  def with_gradients(fn):
    with tf.GradientTape() as tape:
      tape.watch(y)
      jac, x = fn(manifold, psi, y)
      total = tf.reduce_sum(tf.linalg.slogdet(jac)[1])
    grads = tape.gradient(total, [y] + list(psi.trainable_variables),
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return [jac, x, manifold.proju(y, grads[0])] + grads[1:]

  closed = with_gradients(deriv.inverse_jacobian)
  taped = with_gradients(_tape_inverse_jacobian)
  for a, b in zip(closed, taped):
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-10)
  steps = manifold.dist(y, closed[1]).numpy()
  assert np.max(steps) > (0.5 if scale == 8. else -1.)


@pytest.mark.parametrize('name', ['S2', 'T2', 'T1xS2', 'S2pow3'])
def test_closed_form_hvp_and_gradient_for_conjugate_gradients(name):
  """`local_hvp` (one pass through the closed-form gradient field) and
  `local_ambient_gradient` equal the pull-back `hvp` and `ambient_gradient`
  of h, in a graph and eagerly, with and without `identity_on_normals`."""
  manifold = CLOSED_FORM_MANIFOLDS[name]
  x, y = _pairs_on(manifold, 12, seed=11, dtype=tf.float64)
  psi = ircpm.potentials.MLP(manifold, (8, 8), output_scale=0.5, seed=12,
                             dtype=tf.float64)
  u = tf.random.stateless_normal(x.shape, [11, 3], dtype=tf.float64)
  h = deriv.cost_fn(manifold, psi, x)

  def closed(x, y, u):
    return (deriv.local_ambient_gradient(manifold, psi, x, y, symbolic=True),
            deriv.local_hvp(manifold, psi, x, y, u),
            deriv.local_hvp(manifold, psi, x, y, u, identity_on_normals=True))

  reference = (deriv.ambient_gradient(manifold, h, y),
               deriv.hvp(manifold, h, y, u),
               deriv.hvp(manifold, h, y, u, identity_on_normals=True))
  for result in (tf.function(closed)(x, y, u), closed(x, y, u)):
    for a, b in zip(result, reference):
      np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-11)


class _OpaqueSphere(M.Sphere):
  """A sphere that keeps its closed forms to itself."""

  def half_sq_dist_derivatives(self, x, y, frame):
    return None

  def exp_second_order_term(self, y, egrad, frame):
    return None


def test_manifolds_without_closed_forms_fall_back_to_the_pull_back():
  opaque = M.Product([M.Torus(1), _OpaqueSphere(2)])
  x, y = _pairs_on(opaque, 8, seed=5, dtype=tf.float64)
  frame = opaque.tangent_frame(y)
  assert opaque.half_sq_dist_derivatives(x, y, frame) is None
  assert opaque.exp_second_order_term(y, y, frame) is None
  psi = ircpm.potentials.MLP(opaque, (8, 8), output_scale=0.5, seed=6,
                             dtype=tf.float64)
  symbolic = tf.function(lambda x, y: deriv.local_derivatives(
      opaque, psi, x, y, symbolic=True)[:3])(x, y)
  reference = deriv.local_derivatives(M.Product([M.Torus(1), S2]), psi, x,
                                      y)[:3]
  for a, b in zip(symbolic, reference):
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-12)


def test_sphere_closed_form_gradient_and_hessian():
  """ψ(y) = a·y on S²: grad h = −log_y x + P a, Hess h = H_c − (a·y) I with
  H_c = t cot t I + (1 − t cot t) û ûᵀ, û the unit geodesic direction."""
  x, y = _sphere_pairs(10, seed=5, low=0.2, high=2.8)
  a = np.array([0.3, -0.2, 0.5])
  psi = lambda z: tf.linalg.matvec(z, tf.constant(a, z.dtype))
  _, g, hess, frame = deriv.local_derivatives(S2, psi, tf.constant(x),
                                              tf.constant(y))
  frame = frame.numpy()
  xy = np.sum(x * y, -1, keepdims=True)
  t = np.arccos(xy)
  log_yx = t / np.sin(t) * (x - xy * y)                       # log_y(x)
  p_a = a - np.sum(a * y, -1, keepdims=True) * y
  g_ref = np.einsum('nad,na->nd', frame, -log_yx + p_a)
  np.testing.assert_allclose(g.numpy(), g_ref, atol=1e-12)
  u = np.einsum('nad,na->nd', frame, log_yx) / t
  tcot = (t / np.tan(t))[:, :, None]
  eye = np.eye(2)[None]
  h_c = tcot * eye + (1. - tcot) * np.einsum('ni,nj->nij', u, u)
  h_ref = h_c - np.sum(a * y, -1)[:, None, None] * eye
  np.testing.assert_allclose(hess.numpy(), h_ref, atol=1e-12)
  # Eigenvalues of Hess ½d²: 1 along the geodesic, t cot t across (< 1).
  ev = np.linalg.eigvalsh(h_c)
  np.testing.assert_allclose(ev[:, 1], 1., atol=1e-12)
  np.testing.assert_allclose(ev[:, 0], (t / np.tan(t))[:, 0], atol=1e-12)


def test_torus_closed_form_gradient_and_hessian():
  """ψ(y) = Σ b_i sin(y_i + c_i) on the flat T²: grad h = −wrap(x − y) +
  b cos(y + c), Hess h = I − diag(b sin(y + c))."""
  x, y = _torus_pairs(10, seed=6)
  b, c = np.array([0.4, -0.7]), np.array([0.1, 2.])
  psi = lambda z: tf.reduce_sum(b * tf.sin(z + c), -1)
  _, g, hess, _ = deriv.local_derivatives(T2, psi, tf.constant(x),
                                          tf.constant(y))
  d = np.mod(x - y + np.pi, 2. * np.pi) - np.pi
  np.testing.assert_allclose(g.numpy(), -d + b * np.cos(y + c), atol=1e-12)
  h_ref = np.eye(2)[None] - np.einsum('ni,ij->nij', b * np.sin(y + c),
                                      np.eye(2))
  np.testing.assert_allclose(hess.numpy(), h_ref, atol=1e-12)


def test_a_rotated_frame_gives_rotated_derivatives():
  x, y = (tf.constant(a) for a in _sphere_pairs(6, seed=7))
  psi = _mlp(S2, seed=8)
  _, g, hess, frame = deriv.local_derivatives(S2, psi, x, y)
  ang = np.linspace(0.3, 2.5, 6)
  rot = np.stack([np.stack([np.cos(ang), -np.sin(ang)], -1),
                  np.stack([np.sin(ang), np.cos(ang)], -1)], -2)  # [N, 2, 2]
  frame_r = tf.constant(np.einsum('nad,nde->nae', frame.numpy(), rot))
  _, g_r, hess_r, frame_out = deriv.local_derivatives(S2, psi, x, y,
                                                      frame=frame_r)
  assert frame_out is frame_r
  np.testing.assert_allclose(g_r.numpy(),
                             np.einsum('nde,nd->ne', rot, g.numpy()),
                             atol=1e-12)
  np.testing.assert_allclose(
      hess_r.numpy(), np.einsum('ndi,nde,nej->nij', rot, hess.numpy(), rot),
      atol=1e-12)
  assert np.max(np.abs(g_r.numpy() - g.numpy())) > 1e-2   # it did rotate


@pytest.mark.parametrize('name', ['S2', 'T2'])
def test_hvp_is_the_frame_hessian_lifted_by_the_frame(name):
  manifold = S2 if name == 'S2' else T2
  pairs = _sphere_pairs if name == 'S2' else _torus_pairs
  x, y = (tf.constant(a) for a in pairs(9, seed=9))
  psi = _mlp(manifold, seed=10)
  fn = deriv.cost_fn(manifold, psi, x)
  _, _, hess, frame = deriv.frame_derivatives(manifold, fn, y)
  rng = np.random.default_rng(11)
  u = rng.normal(size=y.shape)           # ambient, with a normal component
  w = rng.normal(size=y.shape)
  e, h = frame.numpy(), hess.numpy()
  ref = np.einsum('nad,nde,nbe,nb->na', e, h, e, u)          # E H Eᵀ u
  out = deriv.hvp(manifold, fn, y, tf.constant(u)).numpy()
  np.testing.assert_allclose(out, ref, atol=1e-11)
  # Symmetric: wᵀ Hv(u) = uᵀ Hv(w).
  out_w = deriv.hvp(manifold, fn, y, tf.constant(w)).numpy()
  np.testing.assert_allclose(np.sum(w * out, -1), np.sum(u * out_w, -1),
                             atol=1e-11)
  normal = u - manifold.proju(y, tf.constant(u)).numpy()
  if name == 'S2':
    assert np.min(np.linalg.norm(normal, axis=-1)) > 1e-3
  full = deriv.hvp(manifold, fn, y, tf.constant(u),
                   identity_on_normals=True).numpy()
  np.testing.assert_allclose(full, ref + normal, atol=1e-11)


@pytest.mark.parametrize('name', ['S2', 'T2'])
def test_ambient_gradient_is_the_tangent_frame_gradient(name):
  manifold = S2 if name == 'S2' else T2
  pairs = _sphere_pairs if name == 'S2' else _torus_pairs
  x, y = pairs(9, seed=12)
  psi = _mlp(manifold, seed=13)
  fn = deriv.cost_fn(manifold, psi, tf.constant(x))
  g = deriv.ambient_gradient(manifold, fn, tf.constant(y)).numpy()
  if name == 'S2':
    np.testing.assert_allclose(np.sum(y * g, -1), 0., atol=1e-13)
  _, g_frame, _, frame = deriv.frame_derivatives(manifold, fn, tf.constant(y),
                                                 with_hessian=False)
  np.testing.assert_allclose(
      g, np.einsum('nad,nd->na', frame.numpy(), g_frame.numpy()), atol=1e-12)
  g_fd, _ = _fd_frame_derivatives(manifold, psi, x, y)
  np.testing.assert_allclose(np.einsum('nad,na->nd', frame.numpy(), g), g_fd,
                             atol=1e-7)


def _grad_psi_by_hand(psi, y):
  y = tf.constant(y)
  with tf.GradientTape() as tape:
    tape.watch(y)
    value = psi(y)
  return tape.gradient(value, y).numpy(), value.numpy()


def test_inverse_map_on_the_sphere_is_exp_of_grad_psi():
  rng = np.random.default_rng(14)
  y = rng.normal(size=(20, 3))
  y /= np.linalg.norm(y, axis=-1, keepdims=True)
  psi = _mlp(S2, seed=15, scale=3.)
  grad, value = _grad_psi_by_hand(psi, y)
  g = grad - np.sum(grad * y, -1, keepdims=True) * y
  r = np.linalg.norm(g, axis=-1, keepdims=True)
  x_ref = np.cos(r) * y + np.sin(r) / r * g
  assert np.median(r) > 0.05                   # a map that moves the points
  # Off-sphere input is projected first: same answer for 1.3 y.
  x, psi_y = deriv.inverse_map(S2, psi, tf.constant(1.3 * y))
  np.testing.assert_allclose(x.numpy(), x_ref, atol=1e-13)
  np.testing.assert_allclose(psi_y.numpy(), value, atol=1e-14)
  # The c-transform optimality condition −log_y x + grad ψ(y) = 0: y is a
  # critical point of h(x, ·).
  _, g_h, _, _ = deriv.local_derivatives(S2, psi, x, tf.constant(y),
                                         with_hessian=False)
  np.testing.assert_allclose(g_h.numpy(), 0., atol=1e-12)


def test_inverse_map_on_the_torus_is_the_wrapped_shift():
  rng = np.random.default_rng(16)
  y = rng.uniform(0., 2. * np.pi, size=(20, 2))
  psi = _mlp(T2, seed=17, scale=0.8)
  grad, _ = _grad_psi_by_hand(psi, y)
  x, _ = deriv.inverse_map(T2, psi, tf.constant(y))
  np.testing.assert_allclose(x.numpy(), np.mod(y + grad, 2. * np.pi),
                             atol=1e-12)
  _, g_h, _, _ = deriv.local_derivatives(T2, psi, x, tf.constant(y),
                                         with_hessian=False)
  np.testing.assert_allclose(g_h.numpy(), 0., atol=1e-12)


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_inverse_map_is_nan_exactly_where_psi_is_not_finite(bad):
  rng = np.random.default_rng(18)
  y = rng.normal(size=(40, 3))
  y /= np.linalg.norm(y, axis=-1, keepdims=True)
  a = tf.constant([0.2, 0.1, -0.3], tf.float64)

  def psi(z):   # a tf.where region: zero gradient there, so it looks flat
    return tf.where(z[..., 2] > 0.3, tf.constant(bad, z.dtype),
                    tf.linalg.matvec(z, a))

  x, psi_y = deriv.inverse_map(S2, psi, tf.constant(y))
  bad_rows = y[:, 2] > 0.3
  assert 0 < bad_rows.sum() < len(y)
  assert np.all(np.isnan(x.numpy()[bad_rows]))
  assert not np.any(np.isfinite(psi_y.numpy()[bad_rows]))
  good = x.numpy()[~bad_rows]
  x_lin, _ = deriv.inverse_map(S2, lambda z: tf.linalg.matvec(z, a),
                               tf.constant(y[~bad_rows]))
  np.testing.assert_allclose(good, x_lin.numpy(), atol=1e-14)
  assert np.min(np.linalg.norm(good - y[~bad_rows], axis=-1)) > 1e-2


def test_call_potential_shapes_and_dtypes():
  y = tf.constant(np.eye(3)[:2])
  keras_like = lambda z: tf.reduce_sum(z, -1, keepdims=True)      # [N, 1]
  out = deriv.call_potential(keras_like, y)
  assert out.shape == [2]
  np.testing.assert_allclose(out.numpy(), [1., 1.])
  with pytest.raises(ValueError, match='must map points'):
    deriv.call_potential(lambda z: tf.concat([z, z], -1), y)
  with pytest.raises(TypeError, match='float32'):
    deriv.call_potential(lambda z: tf.cast(z[..., 0], tf.float32), y)
  # cost is ½d² + ψ, with d the great-circle distance.
  x = tf.constant([[0., 0., 1.], [0., 1., 0.]])
  h = deriv.cost(S2, lambda z: 2. * z[..., 0], tf.cast(x, tf.float64), y)
  np.testing.assert_allclose(h.numpy(), [0.5 * (np.pi / 2) ** 2 + 2., 0.],
                             atol=1e-14)
