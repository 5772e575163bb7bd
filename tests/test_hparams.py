"""HParams: declared static / tunable fields, validation, immutability, pytrees."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import count_compiles

import jaxhp
from jaxhp import HParams, HParamsError, static, tunable


class HP(HParams):
    """One field per rule the validation knows."""

    learning_rate: float = tunable(0.1, low=0, low_open=True, log=True)
    l2: float = tunable(0.0, low=0)
    momentum: float = tunable(0.0, low=0, high=1, high_open=True)
    decay: float = tunable(1.0, log=True)
    n_samples: float = tunable(4, low=1, integer=True)
    scale: float = tunable(1.0, choices=(0.5, 1.0, 2.0))
    steps: int = static(10, low=1, integer=True)
    width: int = static(8, low=1, high=64, integer=True)
    optimizer: str = static("sgd", choices=("sgd", "adam"))
    batch_size: int = static(None, low=1, integer=True)


def _error(**values) -> HParamsError:
    with pytest.raises(HParamsError) as info:
        HP(**values)
    return info.value


def _only_problem(**values) -> str:
    err = _error(**values)
    assert len(err.problems) == 1, err.problems
    return err.problems[0]


# ------------------------------------------------------------------ validation
def test_error_is_value_and_type_error():
    err = _error(learning_rate=-1.0)
    assert isinstance(err, ValueError) and isinstance(err, TypeError)
    assert str(err).startswith("HP: 1 invalid field:")


def test_unknown_field_suggests_the_close_name():
    msg = _only_problem(learnig_rate=0.1)
    assert "`learnig_rate`: unknown field of HP (did you mean `learning_rate`?)" in msg
    assert "'steps'" in msg  # the list of fields


def test_unknown_field_without_a_close_name_lists_the_fields():
    msg = _only_problem(zzz=1)
    assert "`zzz`: unknown field of HP" in msg and "did you mean" not in msg
    assert "fields are ['learning_rate', 'l2', 'momentum'" in msg


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"l2": -0.5}, "`l2`=-0.5: must be >= 0 (rule: tunable float32 scalar, in [0, inf))"),
        ({"width": 65}, "`width`=65: must be <= 64"),
        ({"width": 0}, "`width`=0: must be >= 1"),
        ({"steps": -3}, "`steps`=-3: must be >= 1 (rule: static, in [1, inf), an integer)"),
    ],
)
def test_closed_bounds(values, expected):
    assert expected in _only_problem(**values)


def test_closed_bounds_admit_the_bound():
    hp = HP(l2=0.0, width=64, steps=1)
    assert float(hp.l2) == 0.0 and hp.width == 64 and hp.steps == 1


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"learning_rate": 0.0}, "`learning_rate`=0: must be > 0"),
        ({"momentum": 1.0},
         "`momentum`=1: must be < 1 (rule: tunable float32 scalar, in [0, 1))"),
    ],
)
def test_open_bounds_exclude_the_bound(values, expected):
    assert expected in _only_problem(**values)


def test_open_bounds_admit_values_inside():
    hp = HP(learning_rate=1e-6, momentum=0.999)
    assert float(hp.momentum) == pytest.approx(0.999)


@pytest.mark.parametrize("value", [0.0, -2.0])
def test_log_field_must_be_positive(value):
    msg = _only_problem(decay=value)
    assert msg.startswith("`decay`=")
    assert "must be > 0 because the field is log-scaled" in msg


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"n_samples": 2.5}, "`n_samples`=2.5: must be an integer"),
        ({"steps": 2.5}, "`steps`=2.5: must be an integer"),
    ],
)
def test_integer_fields(values, expected):
    assert expected in _only_problem(**values)


@pytest.mark.parametrize("value", [5.0, np.int64(5), np.float32(5)])
def test_static_integer_field_is_stored_as_int(value):
    hp = HP(steps=value)
    assert hp.steps == 5 and type(hp.steps) is int


def test_integer_tunable_is_a_float32_leaf():
    hp = HP(n_samples=3)
    assert hp.n_samples.dtype == np.float32 and float(hp.n_samples) == 3.0


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"scale": 0.7}, "`scale`=0.7: must be one of [0.5, 1.0, 2.0]"),
        ({"optimizer": "sgdd"}, "`optimizer`='sgdd': must be one of ['sgd', 'adam']"),
    ],
)
def test_choices(values, expected):
    assert expected in _only_problem(**values)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float32("nan")])
def test_nan_and_inf_are_rejected(value):
    msg = _only_problem(l2=value)
    assert msg.startswith("`l2`=") and "must be finite (got NaN or Inf)" in msg


def test_nan_inside_a_batched_tunable_is_rejected():
    batch = jaxhp.stack([HP(), HP(learning_rate=0.2)])
    with pytest.raises(HParamsError) as info:
        batch.replace(l2=[0.1, math.nan])
    assert info.value.problems == [
        "setting 1 of the batch: `l2`=nan: must be finite (got NaN or Inf) "
        "(rule: tunable float32 scalar, in [0, inf))"]


@pytest.mark.parametrize("value", [np.array([0.1, 0.2]), [0.1, 0.2], jnp.array([0.1, 0.2]),
                                   np.float32([0.1, 0.2])])
def test_a_tunable_given_an_array_is_an_error_naming_the_field(value):
    # It used to make a batched setting silently (or an oddly shaped one from (1,)).
    assert _only_problem(learning_rate=value) == (
        "`learning_rate`=[0.1 0.2]: a tunable field takes one number per setting, got an "
        "array of shape (2,); use jaxhp.stack([...]) for a batch")
    assert _only_problem(learning_rate=np.array([0.1])) == (
        "`learning_rate`=[0.1]: a tunable field takes one number per setting, got an "
        "array of shape (1,); use jaxhp.stack([...]) for a batch")
    assert "got an array of shape (1, 1)" in _only_problem(l2=np.ones((1, 1)))


@pytest.mark.parametrize("value", [0.25, np.array(0.25), np.float64(0.25), np.float32(0.25),
                                   jnp.array(0.25), jnp.float32(0.25), np.array([0.25])[0]])
def test_a_tunable_takes_numbers_and_0d_arrays(value):
    hp = HP(learning_rate=value)
    assert hp.batch_shape == () and hp.learning_rate.shape == ()
    assert hp.learning_rate.dtype == np.float32 and float(hp.learning_rate) == 0.25


def test_replace_on_a_batch_validates_each_setting():
    batch = jaxhp.stack([HP(learning_rate=0.1), HP(learning_rate=0.2)])
    same = batch.replace(l2=0.5, steps=20)  # one number: every setting of the batch
    assert same.batch_shape == (2,) and same.steps == 20
    np.testing.assert_array_equal(same.l2, np.float32([0.5, 0.5]))
    np.testing.assert_array_equal(same.learning_rate, batch.learning_rate)
    each = batch.replace(momentum=np.array([0.0, 0.9]))  # one number per setting
    np.testing.assert_array_equal(each.momentum, np.float32([0.0, 0.9]))
    assert each[1] == HP(learning_rate=0.2, momentum=0.9)
    with pytest.raises(HParamsError) as info:
        batch.replace(learning_rate=[0.3, -1.0], steps=0)
    assert info.value.problems == [
        "setting 0 of the batch: `steps`=0: must be >= 1 (rule: static, in [1, inf), an "
        "integer)"]
    with pytest.raises(HParamsError, match=r"setting 1 of the batch: `learning_rate`=-1: "
                       r"must be > 0"):
        batch.replace(learning_rate=[0.3, -1.0])
    with pytest.raises(HParamsError, match=r"`l2`=\[0.1, 0.2, 0.3\]: a batch of shape \(2,\) "
                       r"takes one number \(for every setting\) or an array of shape "
                       r"\(2,\) \(one per setting\), got shape \(3,\)"):
        batch.replace(l2=[0.1, 0.2, 0.3])
    grid = jax.tree_util.tree_map(lambda x: x.reshape(2, 1), batch)  # a (2, 1) batch
    assert grid.replace(l2=1.0).batch_shape == (2, 1)
    with pytest.raises(HParamsError, match=r"setting \(1, 0\) of the batch: `l2`=-1"):
        grid.replace(l2=[[0.0], [-1.0]])


@pytest.mark.parametrize(
    ("value", "type_name"), [("0.1", "str"), (None, "NoneType"), (True, "bool")]
)
def test_tunable_needs_a_real_number(value, type_name):
    msg = _only_problem(learning_rate=value)
    assert f"`learning_rate`={value!r}: a tunable field takes a real number" in msg
    assert f"got {type_name}" in msg


def test_tunable_rejects_complex():
    assert "got dtype complex128" in _only_problem(learning_rate=1 + 2j)


@pytest.mark.parametrize("value", [np.array(3), jnp.array(3), np.ones(2)])
def test_static_rejects_arrays(value):
    msg = _only_problem(width=value)
    assert msg.startswith("`width`=")
    assert "a static field takes a plain Python value" in msg and "not an array" in msg


def test_static_must_be_hashable():
    assert "`steps`=[1, 2]: a static field must be hashable (got list)" in _only_problem(
        steps=[1, 2])


def test_static_with_bounds_must_be_a_number():
    assert "`steps`='5': must be a number" in _only_problem(steps="5")


def test_required_fields():
    class Req(HParams):
        rate: float = tunable(low=0)
        depth: int = static()

    with pytest.raises(HParamsError) as info:
        Req()
    assert info.value.problems == [
        "`rate`: required (tunable float32 scalar, in [0, inf)), no value given",
        "`depth`: required (static), no value given",
    ]
    hp = Req(rate=0.5, depth=3)
    assert float(hp.rate) == 0.5 and hp.depth == 3


def test_every_bad_field_is_listed_in_one_error():
    err = _error(learning_rate=-1.0, momentum=2.0, steps=0, optimizer="rmsprop",
                 width=np.array(3), lr=0.1)
    assert len(err.problems) == 6
    msg = str(err)
    assert msg.startswith("HP: 6 invalid fields:")
    for name in ("`learning_rate`", "`momentum`", "`steps`", "`optimizer`", "`width`",
                 "`lr`"):
        assert name in msg


def test_construction_takes_one_number_per_tunable_and_lists_every_array():
    err = _error(learning_rate=[0.1, 0.2], l2=[0.0, 0.1, 0.2])
    assert [p.split(":")[0] for p in err.problems] == ["`learning_rate`=[0.1 0.2]",
                                                        "`l2`=[0.  0.1 0.2]"]
    assert all("one number per setting" in p for p in err.problems)


@pytest.mark.parametrize("value", [0.1, "0.1 written as a default"])
def test_field_without_a_declaration_fails_at_class_creation(value):
    with pytest.raises(TypeError, match=r"Bad\.rate: every field must be declared with "
                       r"jaxhp\.static\(\.\.\.\) or jaxhp\.tunable\(\.\.\.\)"):
        class Bad(HParams):  # noqa: F841 - the class statement itself raises
            rate: float = value


def test_annotation_without_a_value_fails_at_class_creation():
    with pytest.raises(TypeError, match="Bad.rate: every field must be declared"):
        class Bad(HParams):  # noqa: F841
            rate: float


@pytest.mark.parametrize("declare", [tunable, static])
def test_reversed_bounds_fail_at_declaration(declare):
    name = declare.__name__
    with pytest.raises(ValueError, match=rf"{name}\(\): bounds reversed: low=1 > high=0"):
        declare(0.5, low=1, high=0)


def test_log_field_with_negative_low_fails_at_declaration():
    with pytest.raises(ValueError, match=r"log=True needs low >= 0, got low=-1"):
        tunable(1.0, low=-1, log=True)


def test_empty_choices_fail_at_declaration():
    with pytest.raises(ValueError, match="choices must not be empty"):
        tunable(1.0, choices=())


# ------------------------------------------------------------ value semantics
def test_tunables_are_float32_arrays_and_statics_plain_values():
    hp = HP(learning_rate=np.float64(0.25), l2=1, momentum=jnp.asarray(0.5))
    for name in HP.tunable_names():
        value = getattr(hp, name)
        assert isinstance(value, np.ndarray) and value.dtype == np.float32 and value.shape == ()
    assert float(hp.learning_rate) == 0.25 and float(hp.l2) == 1.0
    assert hp.statics() == {"steps": 10, "width": 8, "optimizer": "sgd", "batch_size": None}
    assert HP.static_names() == ("steps", "width", "optimizer", "batch_size")
    assert HP.tunable_names() == ("learning_rate", "l2", "momentum", "decay", "n_samples",
                                  "scale")


def test_immutable():
    hp = HP()
    with pytest.raises(dataclasses.FrozenInstanceError, match=r"use \.replace\(steps=\.\.\.\)"):
        hp.steps = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        hp.learning_rate = 0.3
    with pytest.raises(dataclasses.FrozenInstanceError):
        del hp.l2
    assert hp.steps == 10 and float(hp.learning_rate) == pytest.approx(0.1)


def test_repr():
    hp = HP(learning_rate=0.05, optimizer="adam")
    assert repr(hp) == ("HP(learning_rate=0.05, l2=0, momentum=0, decay=1, n_samples=4, "
                        "scale=1, steps=10, width=8, optimizer='adam', batch_size=None)")
    batch = jaxhp.stack([HP(learning_rate=0.1), HP(learning_rate=0.2)])
    assert repr(batch).startswith("HP[2](learning_rate=[0.1 0.2], l2=[0. 0.]")


def test_repr_of_an_instance_returned_by_jit_is_readable():
    hp = jax.jit(lambda h: h)(HP(learning_rate=0.05))
    assert isinstance(hp.learning_rate, jax.Array)
    assert repr(hp).startswith("HP(learning_rate=0.05, l2=0,")


def test_replace_returns_a_validated_copy():
    hp = HP()
    new = hp.replace(learning_rate=0.3, steps=20)
    assert float(new.learning_rate) == pytest.approx(0.3) and new.steps == 20
    assert float(hp.learning_rate) == pytest.approx(0.1) and hp.steps == 10
    assert new.width == hp.width and type(new) is HP
    with pytest.raises(HParamsError, match=r"`steps`=0: must be >= 1"):
        hp.replace(steps=0)
    with pytest.raises(HParamsError, match=r"did you mean `learning_rate`\?"):
        hp.replace(learning_rat=0.3)


def test_equality_and_hash():
    a, b = HP(learning_rate=0.2), HP(learning_rate=0.2)
    assert a == b and hash(a) == hash(b)
    assert len({a, b, HP(learning_rate=0.3)}) == 2
    assert a != HP(learning_rate=0.3)  # a tunable differs
    assert a != HP(learning_rate=0.2, steps=11)  # a static differs
    assert a != "HP(learning_rate=0.2)"


def test_equal_settings_hash_equal_with_signed_zero():
    assert HP(l2=-0.0) == HP(l2=0.0)
    assert hash(HP(l2=-0.0)) == hash(HP(l2=0.0))


def test_instances_of_different_classes_are_not_equal():
    class Other(HParams):
        learning_rate: float = tunable(0.1)

    class Same(HParams):
        learning_rate: float = tunable(0.1)

    assert Other() != Same() and Other() == Other()


def test_to_dict_round_trip():
    hp = HP(learning_rate=0.5, width=16, optimizer="adam")
    d = hp.to_dict()
    assert d["learning_rate"] == 0.5 and d["width"] == 16 and d["batch_size"] is None
    assert HP.from_dict(d) == hp


def test_subclass_adds_and_overrides_fields():
    class Base(HParams):
        learning_rate: float = tunable(0.1, low=0)
        steps: int = static(10, low=1, integer=True)

    class Annotated(Base):
        learning_rate: float = tunable(0.5, low=0)
        width: int = static(4, low=1, integer=True)

    class Bare(Base):
        learning_rate = tunable(0.7, low=0)

    assert Annotated.static_names() == ("steps", "width")
    assert float(Annotated().learning_rate) == 0.5
    assert float(Bare().learning_rate) == pytest.approx(0.7)
    assert float(Base().learning_rate) == pytest.approx(0.1)


# ------------------------------------------------------------------- pytrees
def test_pytree_leaves_are_the_tunables_and_aux_the_statics():
    hp = HP(learning_rate=0.3, width=16)
    leaves, treedef = jax.tree_util.tree_flatten(hp)
    assert len(leaves) == len(HP.tunable_names())
    assert all(leaf.dtype == np.float32 and leaf.shape == () for leaf in leaves)
    assert float(leaves[0]) == pytest.approx(0.3)
    assert jax.tree_util.tree_unflatten(treedef, leaves) == hp
    # Statics live in the treedef: a new static value is a new structure.
    assert jax.tree_util.tree_structure(hp.replace(width=32)) != treedef
    assert jax.tree_util.tree_structure(hp.replace(learning_rate=0.9)) == treedef
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(hp)[0]]
    assert paths == [f".{n}" for n in HP.tunable_names()]


def test_stack_and_index_round_trip():
    settings = [HP(learning_rate=lr, l2=l2) for lr, l2 in [(0.1, 0.0), (0.2, 0.5), (0.4, 1.0)]]
    batch = jaxhp.stack(settings)
    assert batch.batch_shape == (3,) and len(batch) == 3
    for leaf in jax.tree_util.tree_leaves(batch):
        assert leaf.shape == (3,) and leaf.dtype == np.float32
    np.testing.assert_array_equal(batch.learning_rate, np.float32([0.1, 0.2, 0.4]))
    assert batch.statics() == settings[0].statics()
    for i, s in enumerate(settings):
        assert batch[i] == s and batch[i].batch_shape == ()
    assert batch[-1] == settings[-1]
    assert batch[1:].batch_shape == (2,)


def test_unbatched_setting_has_no_len_or_index():
    with pytest.raises(TypeError, match="len\\(\\) of an unbatched HP"):
        len(HP())
    with pytest.raises(TypeError, match="HP is not batched"):
        HP()[0]


def test_stack_refuses_different_statics():
    with pytest.raises(ValueError) as info:
        jaxhp.stack([HP(), HP(learning_rate=0.2), HP(steps=20, optimizer="adam")])
    msg = str(info.value)
    assert "setting 2 differs from setting 0 in static fields" in msg
    assert "`steps`: 10 vs 20" in msg and "`optimizer`: 'sgd' vs 'adam'" in msg
    assert "static_key()" in msg


def test_stack_refuses_mixed_classes_and_nothing():
    class Other(HParams):
        learning_rate: float = tunable(0.1)

    with pytest.raises(ValueError, match="setting 1 is a Other, setting 0 a HP"):
        jaxhp.stack([HP(), Other()])
    with pytest.raises(ValueError, match="no settings to stack"):
        jaxhp.stack([])


def _scaled(h):
    return h.learning_rate * h.steps + h.l2


def test_jit_traces_tunables_and_keys_on_statics():
    f = jax.jit(_scaled)
    assert float(f(HP(learning_rate=0.5, l2=1.0))) == pytest.approx(6.0)
    with count_compiles() as c:
        out = f(HP(learning_rate=0.25, l2=2.0))
    assert c.count == 0 and float(out) == pytest.approx(4.5)
    with count_compiles() as c:
        out = f(HP(learning_rate=0.25, steps=20))
    assert c.count == 1 and float(out) == pytest.approx(5.0)


def test_vmap_over_a_stacked_instance():
    batch = jaxhp.stack([HP(learning_rate=lr, l2=1.0) for lr in (0.1, 0.2, 0.3)])
    out = jax.vmap(_scaled)(batch)
    np.testing.assert_allclose(out, [2.0, 3.0, 4.0], rtol=1e-6)


def test_grad_with_respect_to_tunables():
    g = jax.grad(lambda h: h.learning_rate ** 2 + 3 * h.l2)(HP(learning_rate=0.5))
    assert type(g) is HP and g.steps == 10
    assert float(g.learning_rate) == pytest.approx(1.0) and float(g.l2) == pytest.approx(3.0)
