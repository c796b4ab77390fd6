"""The lat/long CSV loader and the seeded 80/10/10 split."""

import os

import numpy as np
import pytest

from tfp_ircpm import data

SHARED = data.default_data_path()


def _write(tmp_path, text, name='events.csv'):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def test_loader_skips_comments_and_header_and_maps_to_the_sphere(tmp_path):
  path = _write(tmp_path, '# source: somewhere\n# second comment\n'
                'Latitude,Longitude\n0,0\n90,10\n-30,120,extra\n\n45,-90\n')
  latlon = data.read_latlon(path)
  np.testing.assert_array_equal(
      latlon, [[0, 0], [90, 10], [-30, 120], [45, -90]])
  x = data.load_latlon(path)
  s = np.sqrt(0.5)
  np.testing.assert_allclose(
      x, [[1, 0, 0], [0, 0, 1],
          [np.sqrt(3) / 2 * -0.5, np.sqrt(3) / 2 * np.sqrt(3) / 2, -0.5],
          [0, -s, s]], atol=1e-15)
  np.testing.assert_allclose(np.linalg.norm(x, axis=-1), 1., atol=1e-15)


def test_latlon_round_trip():
  rng = np.random.default_rng(0)
  latlon = np.stack([rng.uniform(-89, 89, 100), rng.uniform(-179, 179, 100)],
                    -1)
  np.testing.assert_allclose(
      data.sphere_to_latlon(data.latlon_to_sphere(latlon)), latlon, atol=1e-10)


@pytest.mark.parametrize('body, row, message', [
    ('1,2\n3\n', 3, 'expected "latitude,longitude"'),
    ('1,2\n3,abc\n', 3, 'longitude'),
    ('1,2\n4,5\nx,5\n', 4, 'latitude'),
    ('1,2\n91,0\n', 3, r'latitude 91.0 is outside \[-90, 90\]'),
    ('1,2\n-90.5,0\n', 3, 'latitude'),
    ('1,2\n10,-181\n', 3, 'longitude -181.0 is outside'),
    ('1,2\n10,nan\n', 3, 'longitude is nan'),
])
def test_malformed_rows_are_reported_with_their_row_number(
    tmp_path, body, row, message):
  path = _write(tmp_path, '# header comment\n' + body)
  with pytest.raises(ValueError, match=f'row {row}: .*{message}'):
    data.read_latlon(path)


def test_a_file_without_data_rows_is_an_error(tmp_path):
  with pytest.raises(ValueError, match='no data rows'):
    data.read_latlon(_write(tmp_path, '# only a comment\nlat,lon\n'))


def test_split_is_seeded_disjoint_and_complete():
  points = np.arange(1000)[:, None] * np.ones([1, 3])
  a = data.split(points, seed=3)
  b = data.split(points, seed=3)
  c = data.split(points, seed=4)
  assert [len(p) for p in a] == [800, 100, 100]
  for pa, pb in zip(a, b):
    np.testing.assert_array_equal(pa, pb)
  assert not np.array_equal(a.test, c.test)
  ids = np.concatenate([p[:, 0] for p in a])
  np.testing.assert_array_equal(np.sort(ids), np.arange(1000))


def test_split_rejects_bad_fractions_and_tiny_sets():
  with pytest.raises(ValueError, match='fractions'):
    data.split(np.zeros([100, 3]), 0, fractions=(0.9, 0.2))
  with pytest.raises(ValueError, match='too few'):
    data.split(np.zeros([5, 3]), 0)


def test_unknown_dataset_and_missing_folder(tmp_path):
  with pytest.raises(ValueError, match='Unknown dataset'):
    data.load_dataset('tsunami', str(tmp_path), 0)
  with pytest.raises(FileNotFoundError, match='volerup.csv'):
    data.load_dataset('volcano', str(tmp_path), 0)


@pytest.mark.skipif(SHARED is None or not os.path.isdir(SHARED),
                    reason='shared Earth data folder absent')
def test_the_shared_earth_files_load():
  sizes = dict(volcano=827, earthquake=6120, flood=4875, fire=12809)
  for name, n in sizes.items():
    s = data.load_dataset(name, SHARED, seed=0)
    assert sum(len(p) for p in s) == n
    assert abs(len(s.train) - 0.8 * n) <= 1
    allp = np.concatenate(s)
    np.testing.assert_allclose(np.linalg.norm(allp, axis=-1), 1., atol=1e-12)
