"""SavedModel export: reloads in a process without tfp_ircpm or TFP."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras
from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-direct-tensorflow-import

import tfp_ircpm as ircpm
from tfp_ircpm import export

from conftest import fibonacci_sphere

tfd, tfb = tfp.distributions, tfp.bijectors

# Runs in a fresh interpreter: imports of tfp_ircpm and TFP are blocked, so
# loading succeeds only if the SavedModel needs neither.
LOADER = r'''
import importlib.abc, json, sys
import numpy as np

class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('tfp_ircpm', 'tensorflow_probability'):
      raise ImportError('blocked: ' + name)
    return None

sys.meta_path.insert(0, Block())
import tensorflow as tf

job = json.loads(sys.argv[1])
results = {}
for key, spec in job.items():
  model = tf.saved_model.load(spec['path'])
  sample = model.signatures['sample']
  log_prob = model.signatures['log_prob']
  drawn = sample(n=tf.constant(spec['n']), seed=tf.constant(spec['seed']))
  again = sample(n=tf.constant(spec['n']), seed=tf.constant(spec['seed']))
  other = sample(n=tf.constant(spec['n']), seed=tf.constant([5, 6]))
  points = tf.constant(np.load(spec['points']))
  fib = tf.constant(np.load(spec['fib']))
  np.savez(spec['out'],
           points=drawn['points'].numpy(),
           sample_log_prob=drawn['log_prob'].numpy(),
           again=again['points'].numpy(),
           other=other['points'].numpy(),
           log_prob=log_prob(points=points)['log_prob'].numpy(),
           resampled_log_prob=log_prob(points=drawn['points'])['log_prob'].numpy(),
           fib_log_prob=log_prob(points=fib)['log_prob'].numpy())
loaded = sorted(m for m in sys.modules
                if m.split('.')[0] in ('tfp_ircpm', 'tensorflow_probability'))
print(json.dumps({'forbidden_modules': loaded}))
'''


def _mlp_flow(dtype):
  """One IRCPM with the package's MLP ψ (kept small: tracing dominates)."""
  sphere = ircpm.manifolds.Sphere(2)
  psi = ircpm.potentials.MLP(sphere, (16, 16), output_scale=0.2, seed=0,
                             dtype=dtype)
  return tfd.TransformedDistribution(sphere.uniform(dtype),
                                     ircpm.IRCPM(sphere, psi))


def _keras_flow(dtype):
  """A shared 2-fold Chain whose ψ is a plain tf_keras Sequential."""
  sphere = ircpm.manifolds.Sphere(2)
  psi = tf_keras.Sequential([
      tf_keras.layers.Dense(16, activation='softplus', dtype=dtype),
      tf_keras.layers.Dense(1, dtype=dtype, kernel_initializer=(
          tf_keras.initializers.RandomNormal(stddev=0.02, seed=1)))])
  psi.build([None, 3])
  bij = ircpm.IRCPM(sphere, psi)
  return tfd.TransformedDistribution(sphere.uniform(dtype),
                                     tfb.Chain([bij, bij]))


def _saved_ops(path):
  proto = saved_model_pb2.SavedModel()
  proto.ParseFromString((pathlib.Path(path) / 'saved_model.pb').read_bytes())
  ops = set()
  for graph in proto.meta_graphs:
    ops.update(n.op for n in graph.graph_def.node)
    for fn in graph.graph_def.library.function:
      ops.update(n.op for n in fn.node_def)
  return ops


CASES = {'mlp_f32': (_mlp_flow, tf.float32),
         'keras_f64': (_keras_flow, tf.float64)}


# Each case traces, saves and reloads in a second TF process: ~30 s of CPU
# (float32) and ~40 s (float64 Keras ψ, 2-fold chain). CI runs the float32
# case, so a clean-subprocess reload is checked on every change; the Keras
# float64 case is `slow`.
@pytest.fixture(scope='module', params=[
    'mlp_f32', pytest.param('keras_f64', marks=pytest.mark.slow)])
def exported(request, tmp_path_factory):
  """Exports a flow, reloads it in a clean subprocess, and returns
  (key, in-process values, reloaded values, the loader's report)."""
  root = tmp_path_factory.mktemp('export')
  fib = fibonacci_sphere(4000)
  job, local = {}, {}
  for key in [request.param]:
    make, dtype = CASES[key]
    q = make(dtype)
    path = str(root / key)
    module = export.save(q, path)
    points = q.sample(64, seed=(3, 4)).numpy()
    np.save(root / f'{key}_points.npy', points)
    np.save(root / f'{key}_fib.npy', fib.astype(dtype.as_numpy_dtype))
    n, seed = 50, [1, 2]
    drawn = module.sample(tf.constant(n), tf.constant(seed))
    eager_points, eager_log_prob = q.experimental_sample_and_log_prob(
        n, seed=tf.constant(seed))
    local[key] = dict(
        q=q, path=path,
        points=drawn['points'].numpy(),
        sample_log_prob=drawn['log_prob'].numpy(),
        eager_points=eager_points.numpy(),
        eager_log_prob=eager_log_prob.numpy(),
        log_prob=module.log_prob(tf.constant(points))['log_prob'].numpy(),
        eager_data_log_prob=q.log_prob(points).numpy())
    job[key] = dict(path=path, n=n, seed=seed, out=str(root / f'{key}.npz'),
                    points=str(root / f'{key}_points.npy'),
                    fib=str(root / f'{key}_fib.npy'))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  env.pop('PYTHONPATH', None)
  proc = subprocess.run([sys.executable, '-c', LOADER, json.dumps(job)],
                        capture_output=True, text=True, env=env, timeout=600,
                        cwd=str(root))
  assert proc.returncode == 0, proc.stderr[-4000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  key, = job
  return key, local[key], dict(np.load(job[key]['out'])), report


def test_loader_imports_neither_tfp_ircpm_nor_tfp(exported):
  _, _, _, report = exported
  assert report['forbidden_modules'] == []


def test_reloaded_log_prob_is_identical(exported):
  key, ours, theirs, _ = exported
  np.testing.assert_array_equal(theirs['log_prob'], ours['log_prob'])
  # The exported function computes what the TFP object computes eagerly.
  tol = 1e-5 if key.endswith('f32') else 1e-12
  np.testing.assert_allclose(ours['log_prob'], ours['eager_data_log_prob'],
                             atol=tol)


def test_same_seed_samples_are_identical(exported):
  key, ours, theirs, _ = exported
  np.testing.assert_array_equal(theirs['points'], ours['points'])
  np.testing.assert_array_equal(theirs['sample_log_prob'],
                                ours['sample_log_prob'])
  np.testing.assert_array_equal(theirs['again'], theirs['points'])
  assert np.abs(theirs['other'] - theirs['points']).max() > 0.1
  tol = 1e-5 if key.endswith('f32') else 1e-12
  np.testing.assert_allclose(ours['points'], ours['eager_points'], atol=tol)
  np.testing.assert_allclose(ours['sample_log_prob'], ours['eager_log_prob'],
                             atol=tol)


def test_reloaded_solve_and_log_dets_are_the_flows(exported):
  """The reloaded sample (forward solve) is on S², not the base draw, and
  the reloaded log_prob (nested-tape log-dets) agrees with it and
  integrates to 1."""
  key, ours, theirs, _ = exported
  tol = 1e-4 if key.endswith('f32') else 1e-10
  np.testing.assert_allclose(np.linalg.norm(theirs['points'], axis=-1), 1.,
                             atol=tol)
  np.testing.assert_allclose(theirs['resampled_log_prob'],
                             theirs['sample_log_prob'], atol=10 * tol)
  q = ours['q']
  base = q.distribution.sample(50, seed=tf.constant([1, 2])).numpy()
  assert np.abs(base - theirs['points']).max() > 1e-3
  mass = np.exp(theirs['fib_log_prob']).sum() * 4. * np.pi / 4000
  assert abs(mass - 1.) < 2e-3


def test_saved_graph_holds_the_solver_loop(exported):
  _, ours, _, _ = exported
  ops = _saved_ops(ours['path'])
  assert ops & {'While', 'StatelessWhile'}
  assert not ops & export.PYTHON_OPS


def _py_function_psi(y):
  """Traces fine, but runs Python at call time (a numpy offset)."""
  offset = tf.numpy_function(lambda t: np.zeros(t.shape[:-1], t.dtype), [y],
                             y.dtype, stateful=False)
  offset.set_shape(y.shape[:-1])
  return 0.01 * tf.reduce_sum(y, -1) + tf.stop_gradient(offset)


def _numpy_psi(y):
  return tf.constant(np.sum(y.numpy(), -1) * 0.01)


def test_python_potential_raises_an_error_naming_the_signature(tmp_path):
  sphere = ircpm.manifolds.Sphere(2)
  q = tfd.TransformedDistribution(sphere.uniform(),
                                  ircpm.IRCPM(sphere, _py_function_psi))
  with pytest.raises(export.ExportError, match=r"'sample'.*PyFunc"):
    export.save(q, str(tmp_path / 'py'))
  q = tfd.TransformedDistribution(sphere.uniform(),
                                  ircpm.IRCPM(sphere, _numpy_psi))
  with pytest.raises(export.ExportError, match=r"'sample'.*tracing it failed"):
    export.save(q, str(tmp_path / 'np'))
  assert not (tmp_path / 'py' / 'saved_model.pb').exists()


def test_save_rejects_non_distributions(tmp_path):
  with pytest.raises(TypeError, match='tfd.Distribution'):
    export.save(object(), str(tmp_path))
