"""Data: deterministic splits, standardisation, checks, minibatches, bundled datasets."""

from __future__ import annotations

import functools
import socket

import jax
import numpy as np
import pytest

import jaxhp
from jaxhp import DataError, Split

KEY = jax.random.key(0)


def _data(n=100, d=3, seed=0):
    rng = np.random.default_rng(seed)
    scale, shift = np.array([1.0, 5.0, 0.1])[:d], np.array([3.0, -2.0, 10.0])[:d]
    x = (rng.normal(size=(n, d)) * scale + shift).astype(np.float32)
    y = (np.arange(n) % 10 < 3).astype(np.int32)  # 30 % ones
    return {"x": x, "y": y, "id": np.arange(n)}


# ------------------------------------------------------------------ split_data
def test_split_is_deterministic_from_the_key():
    data = _data()
    a = jaxhp.split_data(data, key=KEY)
    b = jaxhp.split_data(data, key=jax.random.key(0))
    c = jaxhp.split_data(data, key=jax.random.key(1))
    for pa, pb in zip(a, b, strict=True):
        np.testing.assert_array_equal(pa["id"], pb["id"])
    assert not np.array_equal(a.train["id"], c.train["id"])


def test_split_accepts_a_legacy_uint32_key():
    a = jaxhp.split_data(_data(), key=jax.random.PRNGKey(3))
    assert a.sizes == (60, 20, 20)


@pytest.mark.parametrize(
    ("fractions", "sizes"),
    [((0.6, 0.2, 0.2), (60, 20, 20)), ((0.5, 0.3, 0.2), (50, 30, 20)),
     ((0.8, 0.1, 0.1), (80, 10, 10))],
)
def test_split_fractions_partition_the_examples(fractions, sizes):
    split = jaxhp.split_data(_data(), key=KEY, fractions=fractions)
    assert isinstance(split, Split) and split.sizes == sizes
    ids = np.concatenate([p["id"] for p in split])
    np.testing.assert_array_equal(np.sort(ids), np.arange(100))  # disjoint, complete
    data = _data()
    for part in split:  # rows stay aligned across arrays
        np.testing.assert_array_equal(part["x"], data["x"][part["id"]])
        np.testing.assert_array_equal(part["y"], data["y"][part["id"]])


@pytest.mark.parametrize("fractions", [(0.5, 0.5, 0.0), (0.6, 0.3, 0.3), (0.5, 0.5)])
def test_split_rejects_bad_fractions(fractions):
    with pytest.raises(ValueError, match=r"`fractions` must be three positive numbers "
                       r"summing to 1"):
        jaxhp.split_data(_data(), key=KEY, fractions=fractions)


def test_stratified_split_keeps_class_proportions():
    data = _data(n=200)  # 60 ones, 140 zeros
    split = jaxhp.split_data(data, key=KEY, stratify="y")
    # Each class is cut with the same fractions: 140 -> 84/28/28, 60 -> 36/12/12.
    counts = [np.bincount(p["y"], minlength=2).tolist() for p in split]
    assert counts == [[84, 36], [28, 12], [28, 12]]
    by_array = jaxhp.split_data(data, key=KEY, stratify=data["y"])
    for p, q in zip(split, by_array, strict=True):
        np.testing.assert_array_equal(p["id"], q["id"])


def test_stratify_labels_must_match_the_data():
    with pytest.raises(DataError,
                       match=r"`stratify` labels have shape \(5,\), expected \(100,\)"):
        jaxhp.split_data(_data(), key=KEY, stratify=np.zeros(5))


# ------------------------------------------------------------------ standardize
def test_standardize_uses_training_statistics_only():
    split = jaxhp.split_data(_data(), key=KEY)
    std = jaxhp.standardize(split)
    tr = np.asarray(split.train["x"], np.float64)
    mu, sd = tr.mean(0), tr.std(0)
    np.testing.assert_allclose(std.train["x"].mean(0), 0.0, atol=1e-6)
    np.testing.assert_allclose(std.train["x"].std(0), 1.0, atol=1e-5)
    for raw, out in ((split.val, std.val), (split.test, std.test)):
        assert out["x"].dtype == np.float32
        np.testing.assert_allclose(out["x"], (raw["x"] - mu) / sd, rtol=1e-5, atol=1e-6)
    # Validation is not standardised by its own statistics.
    assert np.abs(std.val["x"].mean(0)).max() > 1e-2
    # Entries not named are untouched.
    np.testing.assert_array_equal(std.val["y"], split.val["y"])
    np.testing.assert_array_equal(std.val["id"], split.val["id"])


def test_standardize_centres_constant_features_without_dividing_by_zero():
    data = _data()
    data["x"][:, 1] = 7.0
    std = jaxhp.standardize(jaxhp.split_data(data, key=KEY))
    for part in std:
        assert np.all(np.isfinite(part["x"]))
        np.testing.assert_array_equal(part["x"][:, 1], 0.0)


def test_standardize_unknown_entry():
    with pytest.raises(KeyError, match="no entry `q` in the data"):
        jaxhp.standardize(jaxhp.split_data(_data(), key=KEY), keys=("q",))


# ------------------------------------------------------------------ data errors
def test_x_and_y_lengths_differ():
    data = _data(n=20)
    data["y"] = data["y"][:19]
    with pytest.raises(DataError, match=r"X and y lengths differ: X has shape \(20, 3\), "
                       r"y has shape \(19,\)"):
        jaxhp.split_data(data, key=KEY)


def test_arrays_of_a_part_disagree_on_examples():
    split = jaxhp.split_data(_data(), key=KEY)
    bad = Split({**split.train, "y": split.train["y"][:-1]}, split.val, split.test)
    with pytest.raises(DataError, match=r"`train`: arrays disagree on the number of examples "
                       r"\(.*train\['x'\] has 60, train\['y'\] has 59\)"):
        jaxhp.check_split(bad)


def test_feature_counts_differ_between_parts():
    split = jaxhp.split_data(_data(), key=KEY)
    bad = Split(split.train, {**split.val, "x": split.val["x"][:, :2]}, split.test)
    with pytest.raises(DataError, match=r"feature shapes differ: train\['x'\] is \(60, 3\), "
                       r"val\['x'\] is \(20, 2\)"):
        jaxhp.check_split(bad)


def test_parts_must_hold_the_same_arrays():
    split = jaxhp.split_data(_data(), key=KEY)
    test = {"x": split.test["x"], "label": split.test["y"], "id": split.test["id"]}
    with pytest.raises(DataError, match=r"`test` has arrays .*'label'.* but `train` has"):
        jaxhp.check_split(Split(split.train, split.val, test))


def test_empty_parts():
    split = jaxhp.split_data(_data(), key=KEY)
    empty_val = jax.tree_util.tree_map(lambda a: a[:0], split.val)
    with pytest.raises(DataError, match=r"`val` is empty \(0 examples\)"):
        jaxhp.check_split(Split(split.train, empty_val, split.test))
    with pytest.raises(DataError, match=r"`data` is empty \(0 examples\)"):
        jaxhp.split_data(jax.tree_util.tree_map(lambda a: a[:0], _data()), key=KEY)
    with pytest.raises(DataError, match=r"`test` is empty"):  # 3 examples: 2 / 1 / 0
        jaxhp.split_data(jax.tree_util.tree_map(lambda a: a[:3], _data()), key=KEY)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_data_names_the_array_and_shape(bad):
    data = _data(n=20)
    data["x"][3, 1] = bad
    with pytest.raises(DataError, match=r"`data\['x'\]` \(shape \(20, 3\)\) holds 1 NaN/Inf"):
        jaxhp.split_data(data, key=KEY)
    split = jaxhp.split_data(_data(), key=KEY)
    test = {**split.test, "x": np.full((20, 3), bad, np.float32)}
    with pytest.raises(DataError, match=r"`test\['x'\]` \(shape \(20, 3\)\) holds 60 NaN/Inf"):
        jaxhp.check_split(Split(split.train, split.val, test))


def test_scalar_leaf_is_rejected():
    with pytest.raises(DataError, match=r"`data\['w'\]` is a scalar"):
        jaxhp.split_data({"x": np.ones((10, 2)), "w": np.float32(1.0)}, key=KEY)


def test_check_split_needs_a_split():
    with pytest.raises(TypeError, match="expected a jaxhp.Split, got tuple"):
        jaxhp.check_split((1, 2, 3))


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


# ----------------------------------------------------------------- sample_batch
@pytest.mark.parametrize("batch_size", [None, 20, 25])
def test_full_batch_when_unset_or_not_smaller_than_the_part(batch_size):
    part = {"x": np.ones((20, 2), np.float32), "y": np.arange(20)}
    assert jaxhp.sample_batch(part, KEY, 3, batch_size) is part


@functools.partial(jax.jit, static_argnames="batch_size")
def _sample_ids(part, key, step, batch_size):
    return jaxhp.sample_batch(part, key, step, batch_size)["id"]


def _batch_ids(n, batch_size, steps, key=KEY):
    part = {"id": np.arange(n), "x": np.zeros((n, 2), np.float32)}
    return [np.asarray(_sample_ids(part, key, t, batch_size)) for t in range(steps)]


def test_minibatches_are_without_replacement_within_an_epoch():
    batches = _batch_ids(n=20, batch_size=5, steps=8)
    assert all(b.shape == (5,) for b in batches)
    epoch0, epoch1 = np.concatenate(batches[:4]), np.concatenate(batches[4:])
    np.testing.assert_array_equal(np.sort(epoch0), np.arange(20))
    np.testing.assert_array_equal(np.sort(epoch1), np.arange(20))
    assert not np.array_equal(epoch0, epoch1)  # a new permutation each epoch


def test_minibatches_drop_the_remainder_of_an_epoch():
    # 22 examples, batches of 5: 4 batches per epoch, 20 distinct examples each epoch.
    batches = _batch_ids(n=22, batch_size=5, steps=4)
    assert len(np.unique(np.concatenate(batches))) == 20


def test_minibatches_are_deterministic_from_the_key():
    a = _batch_ids(n=20, batch_size=5, steps=3)
    b = _batch_ids(n=20, batch_size=5, steps=3)
    c = _batch_ids(n=20, batch_size=5, steps=3, key=jax.random.key(1))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_minibatch_eager_equals_jit():
    part = {"id": np.arange(20)}
    eager = jaxhp.sample_batch(part, KEY, 6, 5)["id"]
    np.testing.assert_array_equal(eager, _batch_ids(n=20, batch_size=5, steps=7)[6])


# --------------------------------------------------------------------- datasets
SHAPES = {
    "diabetes": (442, 10),
    "digits": (1797, 64),
    "iris": (150, 4),
    "wine": (178, 13),
    "breast_cancer": (569, 30),
}
CLASSES = {"diabetes": 0, "digits": 10, "iris": 3, "wine": 3, "breast_cancer": 2}


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("jaxhp.datasets tried to open a network connection")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("name", jaxhp.datasets.NAMES)
def test_load_every_bundled_dataset_without_download(name, no_network):
    assert set(jaxhp.datasets.NAMES) == set(SHAPES)
    split = jaxhp.datasets.load(name)
    n, d = SHAPES[name]
    assert sum(split.sizes) == n
    # Fractions (0.6, 0.2, 0.2), rounded once per class when stratified.
    assert abs(split.sizes[0] - 0.6 * n) <= max(1, CLASSES[name])
    for part in split:
        assert set(part) == {"x", "y"}
        assert part["x"].dtype == np.float32 and part["x"].shape[1:] == (d,)
        assert part["y"].shape == part["x"].shape[:1]
        assert np.all(np.isfinite(part["x"]))
    np.testing.assert_allclose(split.train["x"].mean(0), 0.0, atol=1e-5)
    if name == "diabetes":
        assert split.train["y"].dtype == np.float32
        np.testing.assert_allclose(split.train["y"].mean(), 0.0, atol=1e-5)
        np.testing.assert_allclose(split.train["y"].std(), 1.0, atol=1e-5)
    else:
        k = CLASSES[name]
        assert jaxhp.datasets.n_classes(name) == k
        for part in split:  # stratified: every class in every part
            assert part["y"].dtype == np.int32
            np.testing.assert_array_equal(np.unique(part["y"]), np.arange(k))
    assert jaxhp.datasets.n_classes("diabetes") == 0


def test_load_is_deterministic_and_keyed():
    a = jaxhp.datasets.load("iris", key=jax.random.key(0))
    b = jaxhp.datasets.load("iris")
    c = jaxhp.datasets.load("iris", key=jax.random.key(5))
    np.testing.assert_array_equal(a.val["x"], b.val["x"])
    assert not np.array_equal(a.val["x"], c.val["x"])


def test_load_without_standardisation_keeps_raw_features():
    raw = jaxhp.datasets.load("iris", standardize_x=False)
    assert raw.train["x"].min() >= 0.0 and raw.train["x"].mean() > 1.0


def test_load_unknown_name():
    with pytest.raises(ValueError, match=r"unknown dataset 'digts' \(did you mean "
                       r"`digits`\?\); available: \['diabetes', 'digits'"):
        jaxhp.datasets.load("digts")
