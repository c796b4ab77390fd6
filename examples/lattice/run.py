"""One run: build, (restore,) train, evaluate, compare with MCMC, write JSON."""

import json
import os
import resource
import time
from typing import Dict

import numpy as np
import tensorflow as tf
import tf_keras

from tfp_ircpm import training
from tfp_ircpm.lattice import mcmc

# pylint: disable=relative-beyond-top-level
from . import evaluate as evaluate_lib
from . import models
from .config import Config
# pylint: enable=relative-beyond-top-level


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.


def _train(model, target, config: Config, estimator: str) -> Dict:
  """Adam with cosine decay; the losses and the steady seconds per step."""
  def loss_fn(s):
    return model.loss(target, config.batch_size, s, estimator)

  lr = tf_keras.optimizers.schedules.CosineDecay(config.learning_rate,
                                                 max(1, config.steps))
  times = []

  def callback(step, loss):
    del step, loss
    times.append(time.time())
    return False

  start = time.time()
  losses = training.train(
      loss_fn, model.trainable_variables, config.steps,
      optimizer=tf_keras.optimizers.Adam(lr), seed=config.seed,
      log_every=max(1, config.steps // 10), callback=callback,
      jit_compile=config.jit_compile) if config.steps else []
  train_seconds = time.time() - start
  # The first step includes tracing; the rest is the steady cost per step.
  per_step = (float(np.mean(np.diff(times))) if len(times) > 2
              else float('nan'))
  return dict(losses=losses, train_seconds=train_seconds,
              seconds_per_step=per_step)


def _mcmc_reference(model, target, config: Config, log_w_q) -> Dict:
  """Heat-bath e and χ (and XY vortices), and the evaluation on its states."""
  start = time.time()
  chain = mcmc.heat_bath(target, config.mcmc_chains, config.mcmc_sweeps,
                         config.mcmc_sweeps // 5, seed=config.seed,
                         samples_every=10)
  e = mcmc.summarize(chain['energy_per_site'])
  chi = mcmc.summarize(chain['m2_per_site'])
  out = dict(energy_mcmc=e['mean'], energy_mcmc_err=e['stderr'],
             chi_mcmc=chi['mean'], chi_mcmc_err=chi['stderr'],
             mcmc_seconds=time.time() - start)
  if target.spin == 'xy':
    v = mcmc.summarize(evaluate_lib.vortex_count(target, tf.constant(
        chain['samples'])).reshape(-1, config.mcmc_chains))
    out.update(vortices_mcmc=v['mean'], vortices_mcmc_err=v['stderr'])
  # At most eval_samples of the kept states, spread over the whole run.
  points = chain['samples'].astype(np.float32)
  points = points[np.linspace(0, len(points) - 1,
                              min(len(points), config.eval_samples)
                              ).astype(int)]
  start = time.time()
  out.update(evaluate_lib.evaluate_on_target_samples(
      model, target, points, log_w_q, config.eval_batch))
  out['target_eval_seconds'] = time.time() - start
  return out


def run(config: Config) -> Dict:
  """Runs `config` and writes its result JSON under `config.output_dir`.

  Raises:
    config.ConfigError: `config.check()` fails (before anything is written).
  """
  config.check()
  tf.random.set_seed(config.seed)
  os.makedirs(config.output_dir, exist_ok=True)
  target = models.make_target(config)
  model, estimator = models.build_model(target, config)
  if config.restore:
    tf.train.Checkpoint(variables=model.trainable_variables).read(
        config.restore).assert_consumed()
  data_seconds = 0.
  if config.forward_kl_weight and config.steps:
    start = time.time()
    # Its own seed: the reference MCMC below stays independent of the data.
    model.data = tf.constant(mcmc.heat_bath(
        target, config.mcmc_chains, config.data_sweeps, 200,
        seed=config.seed + 1, samples_every=10)['samples'], tf.float32)
    data_seconds = time.time() - start
    print(f'forward-KL data: {model.data.shape[0]} heat-bath points '
          f'({data_seconds:.0f} s)', flush=True)
  params = models.num_parameters(model)
  print(f'{config.model} L={config.L} beta={config.beta} psi={config.psi} '
        f'params={params} estimator={estimator}', flush=True)

  fit = _train(model, target, config, estimator)
  rss_train = _peak_rss_mb()
  if config.checkpoint:
    tf.train.Checkpoint(variables=model.trainable_variables).write(
        config.checkpoint)
  start = time.time()
  metrics, log_w_q = evaluate_lib.evaluate(
      model, target, config.eval_samples, (config.seed, 99),
      config.eval_batch)
  eval_seconds = time.time() - start
  if config.is_flow and config.base == 'symmetric':
    metrics['base_concentration'] = model.base_concentration()
  if config.is_flow and config.model == 'xy':
    metrics['min_eig_J'] = model.min_eigenvalues(
        min(200, config.eval_samples), (config.seed, 7))
  c = config
  result = dict(model=c.model, L=c.L, beta=c.beta, psi=c.psi,
                layers=c.layers, params=params, estimator=estimator,
                bond_term=c.bond_term, pair_term=c.pair_term,
                base=c.base, spin_wave=c.spin_wave,
                forward_kl_weight=c.forward_kl_weight,
                data_points=(0 if getattr(model, 'data', None) is None
                             else int(model.data.shape[0])),
                data_seconds=data_seconds,
                learning_rate=c.learning_rate,
                barrier_floor=c.barrier_floor, seed=c.seed,
                tolerance=c.tolerance,
                jit_compile=c.jit_compile,
                eval_samples=c.eval_samples,
                steps=c.steps, batch_size=c.batch_size,
                train_seconds=fit['train_seconds'],
                seconds_per_step=fit['seconds_per_step'],
                peak_rss_mb_train=rss_train, eval_seconds=eval_seconds,
                final_loss=fit['losses'][-1] if fit['losses'] else None,
                restored_from=c.restore, **metrics)
  if config.mcmc_sweeps:
    result.update(_mcmc_reference(model, target, config, log_w_q))
  result['peak_rss_mb'] = _peak_rss_mb()
  print(json.dumps(result, indent=1), flush=True)
  with open(os.path.join(config.output_dir, config.result_name()), 'w') as f:
    json.dump(result, f, indent=1)
  return result

