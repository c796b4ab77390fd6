"""The markdown table of result JSONs (`--summarize`)."""

import json
import math
import os


def _fmt(value, spec='.3g'):
  if value is None:
    return '—'
  if isinstance(value, float) and math.isnan(value):
    return 'undefined'
  return format(value, spec)


def summarize(output_dir: str) -> str:
  """One markdown row per result JSON under `output_dir`, grid-ordered.

  MCMC columns come from any run of the same (model, L, β) that has them.
  """
  rows = []
  for root, _, files in os.walk(output_dir):
    for name in files:
      if name.endswith('.json'):
        with open(os.path.join(root, name)) as f:
          data = json.load(f)
        if isinstance(data, dict) and {'model', 'psi', 'ess'} <= set(data):
          rows.append(data)
  mcmc = {}
  for r in rows:
    if 'energy_mcmc' in r:
      mcmc[(r['model'], r['L'], r['beta'])] = r
  order = {'equivariant': 0, 'mlp': 1, 'meanfield': 2}
  rows.sort(key=lambda r: (r['model'], r['L'], r['beta'], order[r['psi']]))
  lines = ['| model | L | β | ψ | layers | params | steps | estimator | ESS | '
           'KL (IS) | KL(p‖q) | unconv. | e rew. | e MCMC | χ rew. | χ MCMC | '
           'λ_min(J) | s/step | train RSS MB |',
           '|' + '---|' * 19]
  for r in rows:
    ref = mcmc.get((r['model'], r['L'], r['beta']), {})
    e_mcmc = (f"{ref['energy_mcmc']:.4f}±{ref['energy_mcmc_err']:.1g}"
              if ref else '—')
    chi_mcmc = f"{ref['chi_mcmc']:.3g}±{ref['chi_mcmc_err']:.2g}" if ref else (
        '—')
    flow = r['psi'] != 'meanfield'
    ess = r['ess']
    equivariant = flow and r['psi'] == 'equivariant'
    lines.append('| ' + ' | '.join([
        r['model'], str(r['L']), f"{r['beta']:g}",
        r['psi'] + (' + bond' if equivariant and r.get('bond_term') else '')
        + (' + pair' if equivariant and r.get('pair_term') else '')
        + (' + spin wave' if equivariant and r.get('spin_wave') else '')
        + (', symmetric base' if flow and r.get('base') == 'symmetric'
           else '')
        + (f", fwd KL ×{r['forward_kl_weight']:g}"
           if r.get('forward_kl_weight') else ''),
        str(r.get('layers', '—')) if flow else '—', str(r['params']),
        str(r['steps']), r['estimator'],
        'undefined' if math.isnan(ess) else f'{100 * ess:.2f}%' + (
            f" ± {100 * r['ess_err']:.1f}" if 'ess_err' in r else ''),
        _fmt(r['kl_is']), _fmt(r.get('kl_pq')),
        f"{r['nonfinite']}/{r.get('eval_samples', '?')}",
        _fmt(r['energy_reweighted'], '.4f') + (
            f"±{r['energy_reweighted_err']:.1g}"
            if 'energy_reweighted_err' in r else ''),
        e_mcmc, _fmt(r['chi_reweighted']),
        chi_mcmc, _fmt(min(r['min_eig_J'])) if 'min_eig_J' in r else '—',
        _fmt(r['seconds_per_step'], '.2g'),
        _fmt(r['peak_rss_mb_train'], '.0f')]) + ' |')
  return '\n'.join(lines)
