"""Markdown tables for the examples' reports."""

from typing import Dict, List


def markdown_table(rows: List[Dict], columns: List[str]) -> str:
  """A markdown table of dict rows over the given columns."""
  def fmt(v):
    return f'{v:.4g}' if isinstance(v, float) else str(v)
  lines = ['| ' + ' | '.join(columns) + ' |',
           '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(fmt(r.get(c, '')) for c in columns) + ' |'
            for r in rows]
  return '\n'.join(lines)
