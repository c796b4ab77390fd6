"""MultiWorkerMirroredStrategy on one machine: two worker processes with
`TF_CONFIG` on 127.0.0.1 train like one process, and survive a killed worker.

Each cluster runs `tests/multiworker_job.py` in two fresh processes (own
session, output to files, SIGKILLed on any exit path, deadline per run).
The single-process reference is the same job run in this process with the
default strategy and the same global batch. Equal means equal within
all-reduce round-off: the two workers' gradients are summed in another
order than one process's.

* CI: maximum likelihood through `training.train` on an auto-sharded
  `tf.data` pipeline (each worker reads its own half of every global batch).
* slow: reverse KL through `training.train`; both objectives through
  `FlowModel.fit`; a worker SIGKILLed mid-training, then the job restarted
  from its backups (`train(backup_dir=...)` and
  `tf_keras.callbacks.BackupAndRestore`): the final weights equal the
  uninterrupted run's, and the restarted job runs exactly the steps after
  the last backup.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tfp_ircpm import distribute

ROOT = pathlib.Path(__file__).resolve().parent.parent
JOB = ROOT / 'tests' / 'multiworker_job.py'
sys.path.insert(0, str(JOB.parent))
import multiworker_job as job  # pylint: disable=g-import-not-at-top,wrong-import-position

NUM_WORKERS = 2
# Loss and weight tolerances: float32 all-reduce round-off over 6 steps.
RTOL, ATOL = 1e-5, 1e-5


def _run_cluster(tmp_path, mode, backup_dir=None, kill_at=None,
                 timeout=240):
  """Starts NUM_WORKERS workers; returns (return codes, logs, chief JSON).

  When a worker dies, the others' collectives fail (or hang): like a
  cluster manager restarting a job, they get 30 s to exit, then SIGKILL.
  """
  out = tmp_path / f'{mode}.json'
  if out.exists():
    out.unlink()
  procs, logs = [], []
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL='2',
             CUDA_VISIBLE_DEVICES='')
  env.pop('KILL_AT_STEP', None)
  if kill_at is not None:
    env['KILL_AT_STEP'] = str(kill_at)
  configs = distribute.local_tf_configs(NUM_WORKERS)
  try:
    for i in range(NUM_WORKERS):
      env['TF_CONFIG'] = configs[i]
      log = tmp_path / f'{mode}.worker{i}.log'
      logs.append(log)
      args = [sys.executable, str(JOB), mode, str(out)]
      if backup_dir is not None:
        args.append(str(backup_dir))
      with open(log, 'w') as f:
        procs.append(subprocess.Popen(args, env=dict(env), stdout=f,
                                      stderr=subprocess.STDOUT,
                                      start_new_session=True))
    deadline, died = time.time() + timeout, None
    while any(p.poll() is None for p in procs):
      now = time.time()
      if died is None and any(p.poll() not in (None, 0) for p in procs):
        died = now
      if now > deadline or (died is not None and now > died + 30):
        break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
      p.wait()
  codes = [p.returncode for p in procs]
  texts = [log.read_text() for log in logs]
  result = json.loads(out.read_text()) if out.exists() else None
  return codes, texts, result


def _reference(tmp_path, mode):
  out = tmp_path / f'{mode}.reference.json'
  job.main(mode, str(out))
  return json.loads(out.read_text())


def _assert_same_training(got, want):
  # A resumed Keras fit's history holds only the epochs it ran.
  np.testing.assert_allclose(got['losses'],
                             want['losses'][-len(got['losses']):],
                             rtol=RTOL, atol=ATOL)
  assert got['iterations'] == want['iterations'] == job.STEPS
  for a, b in zip(got['weights'], want['weights']):
    np.testing.assert_allclose(a, b, atol=ATOL)


def _assert_ran(codes, texts):
  assert codes == [0] * NUM_WORKERS, '\n'.join(t[-3000:] for t in texts)


def test_two_workers_fit_by_maximum_likelihood_like_one_process(tmp_path):
  """CI smoke test: `train(data=...)` on two workers, an auto-sharded
  pipeline, against one process (same global batch)."""
  codes, texts, got = _run_cluster(tmp_path, 'loop_nll', timeout=150)
  _assert_ran(codes, texts)
  assert got['role'] == dict(task_type='worker', task_id=0,
                             num_workers=2, num_replicas=2, is_chief=True)
  assert 'worker 1 of 2 worker(s), 2 replica(s)' in texts[1]
  want = _reference(tmp_path, 'loop_nll')
  _assert_same_training(got, want)
  # Each worker read its own half of every global batch, and the halves
  # make up the global batch the single process saw.
  other = json.loads((tmp_path / 'loop_nll.json.worker1').read_text())
  data = job._data().reshape(job.STEPS, job.GLOBAL_BATCH, 3)
  for step in range(job.STEPS):
    mine, theirs = np.asarray(got['shard'][step]), np.asarray(
        other['shard'][step])
    assert len(mine) == len(theirs) == job.GLOBAL_BATCH // NUM_WORKERS
    np.testing.assert_array_equal(np.concatenate([mine, theirs]),
                                  data[step])


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['loop_kl', 'keras_kl', 'keras_nll'])
def test_two_workers_train_like_one_process(tmp_path, mode):
  codes, texts, got = _run_cluster(tmp_path, mode)
  _assert_ran(codes, texts)
  _assert_same_training(got, _reference(tmp_path, mode))


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['loop_kl', 'keras_kl'])
def test_a_killed_worker_costs_only_the_steps_since_the_last_backup(
    tmp_path, mode):
  """Worker 1 SIGKILLs itself after step 3 (4 steps done; backups every 2
  steps). The restarted job resumes from the last complete backup, runs
  only the remaining steps, and ends with the uninterrupted run's weights
  and losses: reverse-KL samples come from a stateless seed of the step."""
  backup = tmp_path / 'backup'
  codes, texts, got = _run_cluster(tmp_path, mode, backup_dir=backup,
                                   kill_at=3)
  assert codes[1] == -signal.SIGKILL, texts[1][-3000:]
  assert codes[0] != 0 and got is None       # the chief did not finish
  assert 'killing myself after step 3' in texts[1]
  codes, texts, got = _run_cluster(tmp_path, mode, backup_dir=backup)
  _assert_ran(codes, texts)
  if mode == 'loop_kl':
    # The chief saved the 4-step backup (its step 3 completed: the kill
    # came after the all-reduce); steps 4 and 5 alone ran again.
    resumed = re.findall(r'resuming at step (\d+)', texts[0])
    assert resumed == ['4'], texts[0][-3000:]
    assert re.findall(r'^step\s+(\d+)', texts[0], re.M) == ['4', '5']
  _assert_same_training(got, _reference(tmp_path, mode))
