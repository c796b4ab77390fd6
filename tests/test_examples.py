"""The README's main job runs end to end and learns."""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_quickstart_trains_and_reports_ess_and_kl():
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  out = subprocess.run(
      [sys.executable, str(ROOT / 'examples' / 'quickstart.py'),
       '--steps=120', '--eval_samples=4000'],
      capture_output=True, text=True, env=env, timeout=900, check=True).stdout
  before = re.search(r'before training: ESS = ([\d.]+)%  KL = ([\d.-]+)', out)
  after = re.search(r'after 120 steps .*: ESS = ([\d.]+)%  KL = ([\d.-]+)', out)
  assert before and after, out
  assert float(after.group(2)) < 0.5 * float(before.group(2))
  assert float(after.group(1)) > float(before.group(1))
