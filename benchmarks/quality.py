"""Section quality: time to ESS ≥ 99% and KL ≤ 0.003 on S².

Read from `benchmarks/time_to_quality.json` (written by
`python -m benchmarks.time_to_quality`), or trained here (minutes).
"""

import json
import os
from typing import Dict, List

TTQ_JSON = 'benchmarks/time_to_quality.json'


def measure(run: bool, quick: bool) -> List[Dict]:
  """run: train now; else the committed record (none in quick mode)."""
  if run:
    from benchmarks import time_to_quality  # pylint: disable=g-import-not-at-top
    return [time_to_quality.time_to_quality(**time_to_quality.DEFAULTS)]
  if os.path.exists(TTQ_JSON) and not quick:
    with open(TTQ_JSON) as f:
      return [dict(json.load(f), source=TTQ_JSON)]
  return []
