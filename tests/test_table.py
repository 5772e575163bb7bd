"""Settings as columns: Space.table, SettingsTable, vectorised validation and sampling."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import numpy as np
import pytest

import jaxhp
from jaxhp import (
    HParams,
    HParamsError,
    SettingsTable,
    SpaceError,
    choice,
    fixed,
    grid,
    intrange,
    loguniform,
    quasirandom,
    random,
    static,
    tunable,
    uniform,
)
from jaxhp.models import MLPHP, LinearHP


class HP(HParams):
    """One field per rule the validation knows (as in test_hparams.py)."""

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


class Shapes(HParams):
    """Statics of every Python type: tuples, bools, free floats, None."""

    rate: float = tunable(0.1, low=0, low_open=True, log=True)
    hidden: tuple = static((8, 8))
    residual: bool = static(False)
    temperature: float = static(1.0)
    tag: str = static(None)


class Needs(HParams):
    rate: float = tunable(low=0, low_open=True, log=True)  # required: no default
    seed: int = static(0, low=0, integer=True)


class Ordered(HParams):
    low: float = tunable(0.0)
    high: float = tunable(1.0)

    def __check__(self):
        if float(self.low) >= float(self.high):
            raise ValueError("`low` must be < `high`")


def legacy_settings(space, cls, base=None):
    """The settings of a space built one validated object at a time: each row's values
    (as plain Python values) through ``cls(...)`` / ``base.replace(...)``.

    The values are the table's own, so this checks the conversion, dtypes, grouping and
    batching of the columns against the per-setting constructor; the draws themselves
    are checked element by element against ``Distribution.sample_unit`` (below) and
    for counts, order, bounds and reproducibility in test_space.py.
    """
    space.validate(cls, base)
    cols = space.table(cls, base).columns
    out = []
    for i in range(len(space)):
        values = {n: cols[n][i].item() if cols[n].dtype != object else cols[n][i]
                  for n in space.fields}
        out.append(base.replace(**values) if base is not None else cls(**values))
    return out


def assert_identical(a, b):
    """Equal settings, bit for bit: the statics' types and the tunables' dtype and bytes."""
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert type(x) is type(y) and x == y, i
        for n in x.static_names():
            vx, vy = getattr(x, n), getattr(y, n)
            assert type(vx) is type(vy) and vx == vy, (i, n, vx, vy)
        for n in x.tunable_names():
            vx, vy = getattr(x, n), getattr(y, n)
            assert type(vx) is np.ndarray and type(vy) is np.ndarray, (i, n)
            assert vx.shape == vy.shape == () and vx.dtype == vy.dtype, (i, n)
            assert vx.tobytes() == vy.tobytes(), (i, n, vx, vy)


MLP_DISTS = dict(learning_rate=loguniform(1e-4, 0.5), weight_decay=uniform(0.0, 0.1),
                 dropout=uniform(0.2, 0.5), width=intrange(8, 12),
                 depth=intrange(1, 64, log=True), activation=["relu", "tanh"])
LR_L2 = dict(learning_rate=loguniform(1e-4, 1.0), l2=loguniform(1e-6, 1.0))

SPACES = {
    "grid": (grid(width=[32, 64.0, 128], optimizer=["sgd", "adam"], depth=fixed(3)),
             MLPHP, None),
    "grid-base": (grid(learning_rate=[0.1, 0.01, 1], optimizer=["sgd", "adam"]), LinearHP,
                  LinearHP(l2=0.5, steps=20)),
    "grid-empty": (grid(), MLPHP, None),
    "random": (random(300, seed=4, **MLP_DISTS), MLPHP, None),
    "sobol": (quasirandom(300, seed=5, **MLP_DISTS), MLPHP, None),
    "halton": (quasirandom(300, seed=6, method="halton", **MLP_DISTS), MLPHP, None),
    "sobol-2d": (quasirandom(4096, seed=1, **LR_L2), LinearHP, None),
    "random-2d-base": (random(1000, seed=2, **LR_L2), LinearHP,
                       LinearHP(momentum=0.9, steps=50, batch_size=32)),
    "open-bound-rounding": (random(50, momentum=uniform(1 - 1e-9, 1.0)), LinearHP, None),
    "product": (grid(optimizer=["sgd", "adam"]) * random(5, learning_rate=loguniform(1e-4, 1))
                * quasirandom(3, l2=loguniform(1e-6, 1.0)), LinearHP, None),
    "concat": (grid(optimizer=["sgd", "adam"]) + quasirandom(7, l2=loguniform(1e-6, 1.0)),
               LinearHP, None),
    "concat-product": ((grid(optimizer=["sgd", "adam"]) + grid(optimizer=["adamw"]))
                       * random(5, learning_rate=loguniform(1e-4, 1.0)), LinearHP, None),
    "concat-none-and-ints": (grid(batch_size=[32, 64]) + grid(steps=[10, 20])
                             + random(6, batch_size=[None, 16], steps=intrange(1, 9)),
                             LinearHP, None),
    "statics-vary": ((grid(width=[64.0, 128], optimizer=["sgd", "adamw"])
                      * random(3, depth=intrange(1, 4), batch_size=choice([np.int64(32), 64])))
                     * quasirandom(4, method="halton", learning_rate=loguniform(1e-4, 1)),
                     MLPHP, None),
    "tuples-bools-floats": (grid(hidden=[(8, 8), (16,), ()], residual=[True, False])
                            * random(4, temperature=uniform(0.5, 2.0), tag=["a", None, "bb"],
                                     rate=loguniform(1e-3, 1.0)), Shapes, None),
    "integer-and-choice-tunables": (random(64, n_samples=intrange(1, 9),
                                           scale=choice([0.5, 1, 2.0]),
                                           decay=loguniform(0.1, 10.0)), HP, None),
    "required-with-base": (grid(seed=[1, 2, 3]), Needs, Needs(rate=0.5)),
    "required-in-space": (random(3, {"seed": intrange(0, 9)}, seed=4,
                                 rate=loguniform(0.1, 1)), Needs, None),
}


# ------------------------------------------------------ same settings as before
@pytest.mark.parametrize("name", list(SPACES))
def test_table_settings_equal_the_per_setting_path(name):
    space, cls, base = SPACES[name]
    expected = legacy_settings(space, cls, base)
    table = space.table(cls, base)
    assert len(table) == len(space) == len(expected)
    assert_identical(table.settings(), expected)
    assert_identical(space.settings(cls, base), expected)
    assert_identical([table.setting(i) for i in range(len(table))], expected)
    assert table.to_dicts() == [s.to_dict() for s in expected]
    assert list(table.columns) == list(cls.fields())


def test_columns_have_the_documented_dtypes():
    space, cls, base = SPACES["concat-none-and-ints"]
    cols = space.table(cls, base).columns
    assert cols["learning_rate"].dtype == np.float32
    assert cols["steps"].dtype == np.int64 and cols["optimizer"].dtype.kind == "U"
    assert cols["batch_size"].dtype == object  # None mixed with ints
    cols = SPACES["tuples-bools-floats"][0].table(Shapes).columns
    assert cols["residual"].dtype == bool and cols["temperature"].dtype == np.float64
    assert cols["hidden"].dtype == object and cols["tag"].dtype == object
    assert all(not c.flags.writeable for c in cols.values())


def test_float64_under_x64_matches_the_per_setting_path():
    space = quasirandom(64, seed=3, momentum=uniform(1 - 1e-12, 1.0), **LR_L2)
    with jax.enable_x64(True):
        table = space.table(LinearHP)
        assert table.columns["l2"].dtype == np.float64
        assert_identical(table.settings(), legacy_settings(space, LinearHP))


# --------------------------------------------------------- groups and batches
def _groups_by_static_key(settings):
    index, groups, first = {}, [], []
    for i, s in enumerate(settings):
        key = s.static_key()
        if key not in index:
            index[key] = len(index)
            first.append(i)
        groups.append(index[key])
    return groups, first


@pytest.mark.parametrize("name", ["grid", "random", "statics-vary", "tuples-bools-floats",
                                  "concat-none-and-ints", "sobol-2d", "product"])
def test_groups_equal_grouping_by_static_key(name):
    space, cls, base = SPACES[name]
    settings = legacy_settings(space, cls, base)
    table = space.table(cls, base)
    groups, first = _groups_by_static_key(settings)
    assert table.groups.dtype == np.int64 and table.groups.tolist() == groups
    assert table.n_groups == len(first)
    for g, i in enumerate(first):
        statics = table.group_statics[g]
        assert statics == settings[i].statics()
        assert [type(v) for v in statics.values()] == [
            type(v) for v in settings[i].statics().values()]
        np.testing.assert_array_equal(table.rows(g), [j for j in range(len(settings))
                                                      if groups[j] == g])


@pytest.mark.parametrize("name", ["statics-vary", "tuples-bools-floats", "sobol-2d",
                                  "concat-none-and-ints"])
def test_batch_equals_stack_of_the_settings(name):
    space, cls, base = SPACES[name]
    settings = legacy_settings(space, cls, base)
    table = space.table(cls, base)
    rng = np.random.default_rng(0)
    for g in range(table.n_groups):
        rows = table.rows(g)
        for pick in (rows, rng.permutation(rows)[: max(1, len(rows) // 2)]):
            got = table.batch(pick)
            want = jaxhp.stack([settings[i] for i in pick])
            got_leaves, got_def = jax.tree_util.tree_flatten(got)
            want_leaves, want_def = jax.tree_util.tree_flatten(want)
            assert got_def == want_def and type(got) is cls
            for a, b in zip(got_leaves, want_leaves):
                assert type(a) is np.ndarray and a.dtype == b.dtype and a.shape == b.shape
                assert a.tobytes() == b.tobytes()
            tun = table.tunables(pick)
            assert all(np.array_equal(tun[n], getattr(want, n)) for n in cls.tunable_names())


def test_batch_refuses_rows_of_several_groups_and_no_rows():
    table = grid(optimizer=["sgd", "adam"], steps=[5]).table(LinearHP)
    with pytest.raises(ValueError, match=r"row 1 differs from row 0 .*`optimizer`: 'sgd' vs "
                       r"'adam'"):
        table.batch([0, 1])
    with pytest.raises(ValueError, match="no rows"):
        table.batch([])
    with pytest.raises(IndexError):
        table.batch([7])
    assert table.batch(np.array([False, True])).optimizer == "adam"


# ----------------------------------------------------------------- validation
N, ROW = 20, 17


def _column(field, bad):
    """A column of HP's defaults for ``field`` with ``bad`` at row ``ROW``."""
    values = [HP.fields()[field].default] * N
    values[ROW] = bad
    return values


def _expected(field, bad, row=ROW):
    """The message construction gives for the bad value, with its row named."""
    with pytest.raises(HParamsError) as info:
        HP(**{field: bad})
    (msg,) = info.value.problems
    head, tail = msg.split(": ", 1)
    return f"{head} (setting {row}): {tail}"


@pytest.mark.parametrize("field, bad", [
    ("l2", math.nan), ("l2", math.inf), ("l2", 1e39),            # finite (float32 range)
    ("n_samples", 2.5),                                          # integer
    ("l2", -0.5),                                                # closed low
    ("learning_rate", 0.0),                                      # open low
    ("momentum", 1.0),                                           # open high
    ("decay", -2.0), ("decay", 0.0),                             # log
    ("scale", 0.7),                                              # choices
    ("learning_rate", "0.1"), ("learning_rate", None), ("learning_rate", True),  # not real
    ("optimizer", "sgdd"),                                       # static choices
    ("width", 65), ("width", 0), ("steps", -3),                  # static range
    ("steps", 2.5),                                              # static integer
    ("steps", "5"), ("steps", True),                             # static: not a number
    ("steps", [1, 2]),                                           # static: unhashable
    ("width", np.array(3)),                                      # static: an array
    ("batch_size", 0),                                           # None mixed with ints
])
def test_validation_names_field_value_rule_and_row(field, bad):
    col = _column(field, bad)
    if isinstance(bad, float):  # also as a float column, as numpy would hold it
        arrays = [col, np.array(col, np.float64)]
    else:
        arrays = [col]
    for values in arrays:
        with pytest.raises(HParamsError) as info:
            SettingsTable(HP, {field: values})
        assert info.value.problems == [_expected(field, bad)]
        assert info.value.row == ROW


def test_validation_lists_every_bad_field_of_the_first_bad_setting_only():
    l2, width, momentum = [0.0] * N, [8] * N, [0.0] * N
    l2[5], width[5], momentum[9] = -1.0, 100, 2.0  # setting 5: two fields; 9: later
    with pytest.raises(HParamsError) as info:
        SettingsTable(HP, {"l2": np.array(l2), "width": np.array(width),
                           "momentum": np.array(momentum)})
    assert info.value.problems == [_expected("l2", -1.0, 5), _expected("width", 100, 5)]
    assert str(info.value).startswith("HP: 2 invalid fields:")


def test_validation_unknown_and_required_fields():
    with pytest.raises(HParamsError) as info:
        SettingsTable(HP, {"learnig_rate": [0.1, 0.2], "l2": [0.1, -1.0]})
    with pytest.raises(HParamsError) as one:
        HP(learnig_rate=0.1)
    assert info.value.problems == one.value.problems  # setting 0: only the unknown field
    with pytest.raises(HParamsError) as info:
        SettingsTable(Needs, {"seed": np.array([1, 2])})
    assert info.value.problems == ["`rate`: required (tunable float32 scalar, in (0, inf), "
                                   "> 0 (log scale)), no value given"]
    SettingsTable(Needs, {"rate": [0.5, 1.0]})  # seed: the default
    with pytest.raises(ValueError, match="different lengths"):
        SettingsTable(HP, {"l2": [0.1], "width": [8, 16]})
    with pytest.raises(HParamsError, match="one number per setting"):
        SettingsTable(HP, {"l2": np.zeros((3, 2))})


def test_cross_field_check_runs_per_row_and_names_the_setting():
    with pytest.raises(HParamsError) as info:
        SettingsTable(Ordered, {"low": [0.0, 0.5, 3.0], "high": [1.0, 1.0, 2.0]})
    assert info.value.row == 2 and "setting 2: `low` must be < `high`" in str(info.value)
    with pytest.raises(SpaceError, match=r"setting 1 of grid\(low=\[0.0, 2.0\]\) "
                       r"\(\{'low': 2.0\}\) is invalid: `low` must be < `high`"):
        grid(low=[0.0, 2.0]).table(Ordered)


def test_check_column_on_the_field():
    f = HP.fields()["l2"]
    bad, msg = f.check_column(np.array([0.1, -1.0, -2.0]), "l2")
    assert bad.tolist() == [False, True, True]
    assert msg == ("`l2`=-1 (setting 1): must be >= 0 (rule: tunable float32 scalar, "
                   "in [0, inf))")
    bad, msg = f.check_column(np.zeros(4), "l2")
    assert bad.tolist() == [False] * 4 and msg is None
    bad, msg = HP.fields()["optimizer"].check_column(["sgd", "adam", "rmsprop"], "optimizer")
    assert bad.tolist() == [False, False, True]
    assert msg == "`optimizer`='rmsprop' (setting 2): must be one of ['sgd', 'adam']"


def test_bounds_and_project_clip_into_the_fields_rule():
    """The one home of projection (PBT's explore and gradient tuning use it)."""
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 3, 200), 10.0 ** rng.uniform(-40, 40, 200),
                             [0.0, 1.0, -0.0, 1 - 1e-9, 1e31, -1e31, math.inf, -math.inf]])
    for f in [*HP.fields().values(), *LinearHP.fields().values(), *MLPHP.fields().values()]:
        if not f.is_tunable or f.integer or f.choices is not None:
            continue  # projection clips into a range; explore perturbs continuous fields
        lo, hi = f.bounds()
        assert lo <= hi
        if f.low is not None:
            assert lo >= f.low and (lo > f.low or not f.low_open)
        if f.high is not None:
            assert hi <= f.high and (hi < f.high or not f.high_open)
        got = f.project(values)
        assert got.dtype == np.float32
        for v, g in zip(values.tolist(), got.tolist()):
            assert f.check_number(g) is None, (f, v, g)  # every projection is valid
            if lo <= v <= hi and abs(v) < 3e38:  # inside: float32 rounding, open-end steps
                assert abs(g - v) <= 1e-6 * max(abs(v), 1.0)
        np.testing.assert_array_equal(f.project(got), got)  # idempotent


# ------------------------------------------------------- sampling, vectorised
DISTS = [uniform(0.0, 1.0), uniform(-3.5, 1e-3), uniform(1 - 1e-9, 1.0),
         loguniform(1e-6, 1.0), loguniform(1e-3, 10.0), loguniform(0.5, 0.5000001),
         intrange(1, 4), intrange(-7, 300), intrange(1, 255, log=True),
         intrange(3, 3), intrange(0, 2**60), choice(["sgd", "adam", "adamw"]),
         choice([None, 32, 64]), choice([0.5, 1, True, (8, 8)]), choice([(8,), ()]),
         fixed(3), fixed(None), fixed((1, 2))]


@pytest.mark.parametrize("d", DISTS, ids=repr)
def test_sample_units_is_sample_unit_element_by_element(d):
    u = np.concatenate([[0.0, np.nextafter(1.0, 0.0), 0.5, 1e-300],
                        np.random.default_rng(0).random(20_000),
                        np.arange(1024) / 1024, (np.arange(1024) + 0.5) / 1024])  # dyadic
    got = d.sample_units(u)
    assert isinstance(got, np.ndarray) and got.shape == u.shape
    want = [d.sample_unit(x) for x in u.tolist()]
    assert [(type(v), v) for v in got.tolist()] == [(type(v), v) for v in want]
    if got.dtype.kind == "f":
        assert got.tobytes() == np.array(want, np.float64).tobytes()


# ------------------------------------------------------------ new tables
def test_json_round_trip():
    for name in ("tuples-bools-floats", "concat-none-and-ints", "sobol-2d"):
        space, cls, base = SPACES[name]
        table = space.table(cls, base)
        text = json.dumps(table.to_json())
        back = SettingsTable.from_json(json.loads(text), cls)
        assert back == table and SettingsTable.from_json(text, cls) == table
        assert back.groups.tolist() == table.groups.tolist()
        assert back.group_statics == table.group_statics
        assert_identical(back.settings(), table.settings())
    with pytest.raises(ValueError, match="a table of 'Shapes', not of LinearHP"):
        SettingsTable.from_json(SPACES["tuples-bools-floats"][0].table(Shapes).to_json(),
                                LinearHP)
    with pytest.raises(ValueError, match="not a jaxhp.SettingsTable"):
        SettingsTable.from_json({"columns": {}}, LinearHP)


def test_from_settings_take_and_concat():
    space, cls, base = SPACES["statics-vary"]
    table = space.table(cls, base)
    settings = table.settings()
    assert SettingsTable.from_settings(settings) == table
    assert SettingsTable.from_settings(settings).groups.tolist() == table.groups.tolist()
    batch = table.batch(table.rows(0))
    assert SettingsTable.from_settings(batch) == table.take(table.rows(0))
    empty = SettingsTable.from_settings([], cls=MLPHP)
    assert len(empty) == 0 and empty.n_groups == 0 and empty.settings() == []
    with pytest.raises(TypeError, match=r"settings\[1\] is a LinearHP"):
        SettingsTable.from_settings([MLPHP(), LinearHP()])

    rows = np.array([5, 0, 7, 5])
    sub = table.take(rows)
    assert_identical(sub.settings(), [settings[i] for i in rows])
    assert sub.groups.tolist() == _groups_by_static_key(sub.settings())[0]

    a, b = table.take(np.arange(10)), table.take(np.arange(10, len(table)))
    assert SettingsTable.concat([a, b]) == table
    assert SettingsTable.concat([a, b]).groups.tolist() == table.groups.tolist()
    mixed = SettingsTable.concat([grid(batch_size=[32]).table(LinearHP),
                                  grid(steps=[7]).table(LinearHP)])
    assert mixed.columns["batch_size"].dtype == object
    assert_identical(mixed.settings(), [LinearHP(batch_size=32), LinearHP(steps=7)])


def test_mixed_python_types_of_a_static_keep_their_types_and_group_as_static_key():
    class Free(HParams):
        value: float = static(1.0)
        rate: float = tunable(0.1)

    values = [5, 5.0, True, 5, None, (1, True), (1, 1), 1]
    table = SettingsTable(Free, {"value": values})
    expected = [Free(value=v) for v in values]
    assert_identical(table.settings(), expected)
    assert table.groups.tolist() == _groups_by_static_key(expected)[0]
    assert table.columns["value"].dtype == object


def test_table_from_columns_fills_defaults_and_base():
    table = SettingsTable(LinearHP, {"l2": [0.1, 0.2]}, base=LinearHP(steps=9))
    assert_identical(table.settings(), [LinearHP(l2=0.1, steps=9), LinearHP(l2=0.2, steps=9)])
    assert SettingsTable(LinearHP, {}, n=3).settings() == [LinearHP()] * 3


def test_docstring_examples_run():
    import doctest

    globs = {n: getattr(jaxhp, n) for n in ("grid", "quasirandom", "loguniform")}
    finder = doctest.DocTestFinder(recurse=True, exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS
                                   | doctest.IGNORE_EXCEPTION_DETAIL)
    for test in finder.find(SettingsTable, "SettingsTable",
                            globs={**globs, "LinearHP": LinearHP, "np": np}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0 and result.attempted >= 3  # the class docstring's examples
    f = LinearHP.fields()["l2"]  # Field's column methods
    for method in (f.check_column, f.bounds, f.project):
        test = doctest.DocTestParser().get_doctest(
            method.__doc__, {"LinearHP": LinearHP, "np": np}, method.__name__, None, 0)
        assert runner.run(test).failed == 0, method.__name__


def test_table_is_immutable():
    table = grid(optimizer=["sgd", "adam"]).table(LinearHP)
    with pytest.raises(dataclasses.FrozenInstanceError):
        table.groups = None
    with pytest.raises(TypeError):
        table.columns["l2"] = np.zeros(2)
    with pytest.raises(ValueError, match="read-only"):
        table.columns["l2"][0] = 1.0
    assert repr(table) == "SettingsTable(LinearHP: 2 settings, 2 static groups)"
