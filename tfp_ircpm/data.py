"""Earth-science event locations on S²: a lat/long CSV loader and splits.

The sphere density-estimation benchmark (volcanic eruptions, earthquakes,
floods, fires) stores one event per line as `latitude,longitude` in degrees.
Lines starting with `#` name the source, and a single header line of
non-numeric column names may follow. `load_latlon` turns such a file into
unit vectors x = (cos φ cos λ, cos φ sin λ, sin φ) (φ latitude, λ longitude);
`split` makes the seeded 80/10/10 train/validation/test partition.
"""

import os
from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np

DATASETS = {
    'volcano': 'volerup.csv',
    'earthquake': 'quakes_all.csv',
    'flood': 'flood.csv',
    'fire': 'fire.csv',
}


class Split(NamedTuple):
  """Points [N_part, 3] of each part of a dataset."""
  train: np.ndarray
  validation: np.ndarray
  test: np.ndarray


def latlon_to_sphere(latlon_degrees: np.ndarray) -> np.ndarray:
  """[..., 2] (latitude, longitude) in degrees → [..., 3] unit vectors."""
  rad = np.deg2rad(np.asarray(latlon_degrees, np.float64))
  lat, lon = rad[..., 0], rad[..., 1]
  return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon),
                   np.sin(lat)], axis=-1)


def sphere_to_latlon(x: np.ndarray) -> np.ndarray:
  """[..., 3] points of S² → [..., 2] (latitude, longitude) in degrees."""
  x = np.asarray(x, np.float64)
  lat = np.arcsin(np.clip(x[..., 2] / np.linalg.norm(x, axis=-1), -1., 1.))
  lon = np.arctan2(x[..., 1], x[..., 0])
  return np.rad2deg(np.stack([lat, lon], axis=-1))


def _parse_float(text: str, path: str, row: int, column: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise ValueError(f'{path}: row {row}: {column} {text.strip()!r} is not a '
                     'number.') from None
  if not np.isfinite(value):
    raise ValueError(f'{path}: row {row}: {column} is {value}.')
  return value


def read_latlon(path: str) -> np.ndarray:
  """Reads (latitude, longitude) rows in degrees, [N, 2] float64.

  Skips blank lines, `#` comments and one header line before the first
  data row (a line whose first two fields are not both numbers). Extra
  columns are ignored.

  Raises:
    ValueError: naming the file and 1-based line number, for a row with
      fewer than two fields, a non-numeric field after the data started,
      latitude outside [-90, 90] or longitude outside [-180, 360], or a file
      with no data rows.
  """
  rows = []
  header_seen = False
  with open(path, encoding='utf-8') as f:
    for row, line in enumerate(f, start=1):
      line = line.strip()
      if not line or line.startswith('#'):
        continue
      fields = line.split(',')
      if not rows and not header_seen and not _numeric(fields[:2]):
        header_seen = True
        continue
      if len(fields) < 2:
        raise ValueError(f'{path}: row {row}: expected "latitude,longitude", '
                         f'got {line!r}.')
      lat = _parse_float(fields[0], path, row, 'latitude')
      lon = _parse_float(fields[1], path, row, 'longitude')
      if not -90. <= lat <= 90.:
        raise ValueError(f'{path}: row {row}: latitude {lat} is outside '
                         '[-90, 90] degrees.')
      # Some archives write longitudes east-positive in [0, 360).
      if not -180. <= lon <= 360.:
        raise ValueError(f'{path}: row {row}: longitude {lon} is outside '
                         '[-180, 360] degrees.')
      rows.append((lat, lon))
  if not rows:
    raise ValueError(f'{path}: no data rows.')
  return np.asarray(rows, np.float64)


def read_columns(path: str, columns: Optional[Sequence[str]] = None,
                 ) -> np.ndarray:
  """Reads numeric columns of a CSV, [N, len(columns)] float64.

  Skips blank lines and `#` comments. A first non-numeric line is the
  header; `columns` picks columns by header name or by 0-based index
  (default: every column). Errors name the file and 1-based line.
  """
  header, rows, index = None, [], None
  with open(path, encoding='utf-8') as f:
    for row, line in enumerate(f, start=1):
      line = line.strip()
      if not line or line.startswith('#'):
        continue
      fields = [t.strip() for t in line.split(',')]
      if index is None:
        if header is None and not rows and not _numeric(fields + ['0']):
          header = fields
          continue
        index = _column_index(columns, header, len(fields), path)
      if len(fields) <= max(index):
        raise ValueError(f'{path}: row {row}: expected at least '
                         f'{max(index) + 1} fields, got {line!r}.')
      rows.append([_parse_float(fields[i], path, row,
                                header[i] if header else f'column {i}')
                   for i in index])
  if not rows:
    raise ValueError(f'{path}: no data rows.')
  return np.asarray(rows, np.float64)


def _column_index(columns, header, width, path):
  if columns is None:
    return list(range(width))
  out = []
  for c in columns:
    if header is not None and c in header:
      out.append(header.index(c))
    elif str(c).isdigit() and int(c) < width:
      out.append(int(c))
    else:
      raise ValueError(f'{path}: no column {c!r} (header: {header}).')
  return out


def _numeric(fields) -> bool:
  if len(fields) < 2:
    return False
  try:
    for s in fields:
      float(s)
  except ValueError:
    return False
  return True


def load_latlon(path: str) -> np.ndarray:
  """Points on S², [N, 3] float64, from a lat/long CSV (see `read_latlon`)."""
  return latlon_to_sphere(read_latlon(path))


def split(points: np.ndarray, seed: int,
          fractions: Tuple[float, float] = (0.8, 0.1)) -> Split:
  """Seeded random train/validation/test split (default 80/10/10).

  A permutation from `np.random.default_rng(seed)`; the test part takes the
  remainder, so every point lands in exactly one part.

  Args:
    points: [N, ...] array.
    seed: integer seed.
    fractions: (train, validation) fractions; test gets the rest.
  """
  points = np.asarray(points)
  n = points.shape[0]
  train_frac, val_frac = fractions
  if train_frac <= 0 or val_frac <= 0 or train_frac + val_frac >= 1:
    raise ValueError(f'fractions must be positive with sum < 1, got '
                     f'{fractions}.')
  n_train = int(round(train_frac * n))
  n_val = int(round(val_frac * n))
  if min(n_train, n_val, n - n_train - n_val) < 1:
    raise ValueError(f'{n} points are too few for a {fractions} split.')
  perm = np.random.default_rng(seed).permutation(n)
  return Split(train=points[perm[:n_train]],
               validation=points[perm[n_train:n_train + n_val]],
               test=points[perm[n_train + n_val:]])


# Points read from the same CSV text are bit-identical; rounding to 9
# decimals (about 6 mm on the Earth) only absorbs dtype conversions.
DECIMALS = 9


def distinct(points: np.ndarray, decimals: int = DECIMALS) -> np.ndarray:
  """The distinct rows of `points` [N, D] after rounding to `decimals`,
  sorted, in `points`' dtype."""
  points = np.asarray(points)
  return np.unique(np.round(points, decimals), axis=0).astype(points.dtype)


def deduplicated(test: np.ndarray, train: np.ndarray,
                 decimals: int = DECIMALS) -> np.ndarray:
  """The rows of `test` whose coordinates occur nowhere in `train`.

  Event catalogues repeat coordinates (Volcano: 267 distinct locations among
  827 rows), so a random split puts exact copies of training points in the
  test part, which a density can score arbitrarily well by memorising them.
  Scoring on the remaining rows measures generalisation. Rows are compared
  after rounding to `decimals`, as in `distinct`.

  Args:
    test: [N, D] points.
    train: [N_train, D] points.

  Returns:
    [N', D], N' <= N, in `test`'s order.
  """
  test, train = np.asarray(test), np.asarray(train)
  seen = {tuple(r) for r in np.round(train, decimals)}
  keep = [tuple(r) not in seen for r in np.round(test, decimals)]
  return test[np.asarray(keep, bool)]


def load_dataset(name: str, data_path: str, seed: int,
                 fractions: Tuple[float, float] = (0.8, 0.1)) -> Split:
  """`split(load_latlon(data_path/file), seed)` for a name in `DATASETS`."""
  if name not in DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; one of {sorted(DATASETS)}.')
  path = os.path.join(data_path, DATASETS[name])
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found (set the data path).')
  return split(load_latlon(path), seed, fractions)


def default_data_path() -> Optional[str]:
  """$EARTH_DATA, else shared/data/earth beside the checkout, if present.

  "Beside the checkout" is looked up from this source file (an editable
  install) and from the working directory, so no machine path is assumed.
  """
  env = os.environ.get('EARTH_DATA')
  if env:
    return env
  here = os.path.dirname(os.path.abspath(__file__))
  for candidate in (os.path.join(here, '..', '..', 'shared', 'data', 'earth'),
                    os.path.join(os.getcwd(), '..', 'shared', 'data', 'earth')):
    if os.path.isdir(candidate):
      return os.path.normpath(candidate)
  return None
