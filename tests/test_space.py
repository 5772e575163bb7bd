"""Search spaces: counts, bounds, spread, reproducibility, uniformity, validation."""

import dataclasses
import json
import math

import numpy as np
import pytest

import jaxhp
from jaxhp import (
    HParams,
    Space,
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
from jaxhp.models import MLPHP, OPTIMIZERS, LinearHP


class Unit2(HParams):
    x: float = tunable(0.5, low=0, high=1, high_open=True)
    y: float = tunable(0.5, low=0, high=1, high_open=True)


class Needs(HParams):
    rate: float = tunable(low=0, low_open=True, log=True)  # required: no default
    seed: int = static(0, low=0, integer=True)


class Ordered(HParams):
    low: float = tunable(0.0)
    high: float = tunable(1.0)

    def __check__(self):
        if float(self.low) >= float(self.high):
            raise ValueError("`low` must be < `high`")


def points(space: Space) -> np.ndarray:
    """The settings of a space over ``Unit2`` as an ``(n, 2)`` array."""
    return np.array([[float(h.x), float(h.y)] for h in space.settings(Unit2)])


def centered_l2_discrepancy(x: np.ndarray) -> float:
    """Hickernell's centered L2 discrepancy (squared) of points in [0, 1)^d."""
    n, d = x.shape
    z = np.abs(x - 0.5)
    single = np.prod(1 + 0.5 * z - 0.5 * z**2, axis=1)
    pair = np.prod(1 + 0.5 * z[:, None] + 0.5 * z[None] - 0.5 * np.abs(x[:, None] - x[None]),
                   axis=2)
    return float((13 / 12) ** d - 2 / n * single.sum() + pair.sum() / n**2)


def cell_chi2(x: np.ndarray, cells: int = 16) -> float:
    """Chi-square of the counts over a ``cells x cells`` grid (0 for a perfect net)."""
    i = np.minimum((x * cells).astype(int), cells - 1)
    counts = np.bincount(i[:, 0] * cells + i[:, 1], minlength=cells * cells)
    expected = len(x) / cells**2
    return float(((counts - expected) ** 2 / expected).sum())


# ------------------------------------------------------------------ counts
def test_grid_count_order_and_values():
    space = grid(width=[32, 64, 128], optimizer=["sgd", "adam"], depth=fixed(3))
    assert len(space) == 3 * 2 * 1
    assert space.fields == ("width", "optimizer", "depth")
    hps = space.settings(MLPHP)
    assert [(h.width, h.optimizer) for h in hps] == [
        (w, o) for w in (32, 64, 128) for o in ("sgd", "adam")]
    assert all(h.depth == 3 for h in hps)
    assert len(grid()) == 1 and grid().settings(MLPHP) == [MLPHP()]


def test_product_and_concat_lengths():
    a = grid(optimizer=["sgd", "adam"])
    b = random(5, learning_rate=loguniform(1e-4, 1.0))
    c = quasirandom(3, l2=loguniform(1e-6, 1.0))
    assert len(a * b) == 10 and len(a * b * c) == 30 and len(a + b) == 7
    assert len((a + grid(optimizer=["adamw"])) * b) == 15
    assert (a * b).fields == ("optimizer", "learning_rate")
    assert (a + c).fields == ("optimizer", "l2")
    hps = (a * b).settings(LinearHP)
    assert len(hps) == 10 and [h.optimizer for h in hps[:6]] == ["sgd"] * 5 + ["adam"]
    assert [float(h.learning_rate) for h in hps[:5]] == [
        float(h.learning_rate) for h in hps[5:]]
    mixed = (a + c).settings(LinearHP)  # fields a part does not set keep the defaults
    assert float(mixed[0].l2) == np.float32(1e-3) and mixed[-1].optimizer == "sgd"
    assert (a * b) * c == a * (b * c)  # products (and sums) flatten: associative


def test_product_of_overlapping_fields_raises():
    with pytest.raises(SpaceError, match=r"both set \['l2'\].*disjoint"):
        grid(l2=[0.1], steps=[5]) * random(4, l2=loguniform(1e-3, 1.0))
    assert isinstance(SpaceError("x"), ValueError)


# ------------------------------------------------------------------ bounds
@pytest.mark.parametrize("make", [random, quasirandom,
                                  lambda n, **kw: quasirandom(n, method="halton", **kw)])
def test_bounds_respected(make):
    space = make(300, learning_rate=loguniform(1e-4, 0.5), weight_decay=uniform(0.0, 0.1),
                 dropout=uniform(0.2, 0.5), width=intrange(8, 12),
                 depth=intrange(1, 64, log=True), activation=["relu", "tanh"])
    hps = space.settings(MLPHP)
    lr = np.array([float(h.learning_rate) for h in hps])
    assert lr.min() >= np.float32(1e-4) and lr.max() < 0.5
    assert all(0.0 <= float(h.weight_decay) < 0.1 for h in hps)
    assert all(0.2 <= float(h.dropout) < 0.5 for h in hps)
    assert {h.width for h in hps} == set(range(8, 13))  # both ends included
    assert all(1 <= h.depth <= 64 for h in hps)
    assert {h.activation for h in hps} == {"relu", "tanh"}


def test_sample_unit_ends():
    top = float(np.nextafter(1.0, 0.0))
    assert uniform(2.0, 3.0).sample_unit(0.0) == 2.0
    assert 2.0 <= uniform(2.0, 3.0).sample_unit(top) < 3.0
    lo, hi = loguniform(1e-3, 10.0).sample_unit(0.0), loguniform(1e-3, 10.0).sample_unit(top)
    assert lo == 1e-3 and hi < 10.0
    assert intrange(3, 7).sample_unit(0.0) == 3 and intrange(3, 7).sample_unit(top) == 7
    assert intrange(3, 7, log=True).sample_unit(top) == 7
    assert choice(["a", "b", "c"]).sample_unit(top) == "c"
    assert fixed((1, 2)).sample_unit(0.3) == (1, 2)


def test_float32_rounding_never_reaches_an_open_bound():
    # Every value is below 1, but most round to 1.0 in float32: they must step back in.
    hps = random(50, momentum=uniform(1 - 1e-9, 1.0)).settings(LinearHP)
    assert all(float(h.momentum) < 1.0 for h in hps)


# ------------------------------------------------------------------ spread
def test_loguniform_median_is_the_geometric_mean():
    hps = random(2001, seed=3, l2=loguniform(1e-6, 1.0)).settings(LinearHP)
    logs = np.log10([float(h.l2) for h in hps])
    assert abs(np.median(logs) - (-3.0)) < 0.15  # geometric mean 1e-3
    counts = np.histogram(logs, bins=6, range=(-6, 0))[0]  # flat in log space
    assert counts.min() > 0.8 * 2001 / 6
    lin = random(2001, seed=3, l2=uniform(1e-6, 1.0)).settings(LinearHP)
    assert abs(np.median([float(h.l2) for h in lin]) - 0.5) < 0.05


def test_intrange_log_is_even_per_octave():
    hps = random(4000, depth=intrange(1, 255, log=True)).settings(MLPHP)
    octaves = np.bincount(np.log2([h.depth for h in hps]).astype(int), minlength=8)
    assert octaves.min() > 0.8 * 4000 / 8


# ------------------------------------------------------- reproducibility
@pytest.mark.parametrize("kind", ["random", "sobol", "halton"])
def test_same_seed_same_settings_other_seed_other_settings(kind):
    def make(seed):
        dists = dict(learning_rate=loguniform(1e-4, 1.0), optimizer=list(OPTIMIZERS))
        if kind == "random":
            return random(16, seed=seed, **dists)
        return quasirandom(16, seed=seed, method=kind, **dists)

    assert make(7).settings(LinearHP) == make(7).settings(LinearHP)
    assert make(7) == make(7) and hash(make(7)) == hash(make(7))
    assert make(7).settings(LinearHP) != make(8).settings(LinearHP)
    assert make(7).to_dict() != make(8).to_dict()


def test_random_fields_draw_from_their_own_streams():
    one = random(8, seed=1, l2=loguniform(1e-6, 1.0)).settings(LinearHP)
    two = random(8, seed=1, learning_rate=uniform(0.1, 0.2),
                 l2=loguniform(1e-6, 1.0)).settings(LinearHP)
    assert [float(h.l2) for h in one] == [float(h.l2) for h in two]


# -------------------------------------------------------------- uniformity
def test_quasirandom_is_more_uniform_than_random():
    seeds = range(8)
    cd = {"random": [centered_l2_discrepancy(points(random(256, seed=s, x=uniform(0, 1),
                                                                 y=uniform(0, 1))))
                     for s in seeds]}
    for method in ("sobol", "halton"):
        cd[method] = [centered_l2_discrepancy(points(
            quasirandom(256, seed=s, method=method, x=uniform(0, 1), y=uniform(0, 1))))
            for s in seeds]
    mean = {k: float(np.mean(v)) for k, v in cd.items()}
    # Measured over seeds 0-7: random 1.3e-3, sobol 1.1e-5, halton 2.3e-5.
    assert mean["sobol"] < 0.1 * mean["random"]
    assert mean["halton"] < 0.1 * mean["random"]
    assert max(cd["sobol"]) < min(cd["random"]) and max(cd["halton"]) < min(cd["random"])


def test_sobol_fills_every_cell_of_a_16x16_grid():
    for s in range(4):  # a scrambled (0, 8, 2)-net: one point in each of the 256 cells
        assert cell_chi2(points(quasirandom(256, seed=s, x=uniform(0, 1),
                                            y=uniform(0, 1)))) == 0.0
    rand = [cell_chi2(points(random(256, seed=s, x=uniform(0, 1), y=uniform(0, 1))))
            for s in range(4)]
    assert min(rand) > 150  # chi-square with 255 dof: random points are far from even


# -------------------------------------------------------------- validation
@pytest.mark.parametrize("space, fragments", [
    (grid(learning_rat=[0.1]), ["`learning_rat`", "unknown field of LinearHP",
                                "did you mean `learning_rate`?"]),
    (random(4, momentum=uniform(-1, 1)), ["`momentum`", "uniform(-1.0, 1.0)", "-1.0",
                                          "must be >= 0", "rule: tunable", "in [0, 1)"]),
    (random(4, momentum=uniform(0.5, 1.5)), ["`momentum`", "uniform(0.5, 1.5)",
                                             "high end 1.5", "must be < 1", "[0, 1)"]),
    (random(4, learning_rate=uniform(0, 1)), ["`learning_rate`", "low end 0.0",
                                              "must be > 0", "(0, inf)"]),
    (random(4, steps=uniform(1, 100)), ["`steps`", "must be an integer",
                                        "use intrange", "static"]),
    (random(4, steps=intrange(0, 10)), ["`steps`", "intrange(0, 10)", "low end 0",
                                        "must be >= 1"]),
    (grid(optimizer=["sgd", "rmsprop"]), ["`optimizer`", "'rmsprop'",
                                          "one of ['sgd', 'adam', 'adamw']"]),
    (random(4, optimizer=uniform(0, 1)), ["`optimizer`", "use choice"]),
    (grid(l2=[0.1, -0.1]), ["`l2`", "-0.1", "must be > 0"]),
    (grid(learning_rate=["fast"]), ["`learning_rate`", "takes a real number"]),
    (random(4, l2=uniform(0, 1e39)), ["`l2`", "float32 range"]),
])
def test_validation_errors(space, fragments):
    with pytest.raises(SpaceError) as err:
        space.validate(LinearHP)
    for fragment in fragments:
        assert fragment in str(err.value)
    with pytest.raises(SpaceError):  # settings() validates first
        space.settings(LinearHP)


def test_validation_lists_every_problem_at_once():
    space = grid(optimizr=["sgd"]) * random(4, momentum=uniform(-1, 2))
    with pytest.raises(SpaceError) as err:
        space.validate(LinearHP)
    assert len(err.value.problems) == 3  # unknown field, low end, high end


@pytest.mark.parametrize("build, fragments", [
    (lambda: loguniform(0, 1), ["loguniform(0.0, 1.0)", "needs low > 0"]),
    (lambda: loguniform(-1, 1), ["needs low > 0"]),
    (lambda: uniform(2, 1), ["uniform(2.0, 1.0)", "bounds reversed"]),
    (lambda: uniform(1, 1), ["use fixed(value)"]),
    (lambda: loguniform(1, 0.5), ["bounds reversed"]),
    (lambda: intrange(5, 1), ["intrange(5, 1)", "bounds reversed"]),
    (lambda: intrange(0, 8, log=True), ["needs low >= 1"]),
    (lambda: intrange(1.5, 4), ["`low` must be an integer"]),
    (lambda: uniform(0, math.inf), ["`high` must be a finite real number"]),
    (lambda: grid(width=[]), ["grid()", "`width`", "empty list"]),
    (lambda: random(4, width=[]), ["random()", "`width`", "empty list"]),
    (lambda: grid(width=64), ["`width`=64", "give a list"]),
    (lambda: grid(optimizer="adam"), ["give a list"]),
    (lambda: grid(learning_rate=uniform(0, 1)), ["random() or quasirandom()"]),
    (lambda: choice([]), ["at least one value"]),
    (lambda: choice("adam"), ["give a list"]),
    (lambda: choice([object()]), ["not a plain value"]),
    (lambda: fixed(float("nan")), ["not a finite number"]),
    (lambda: random(0, l2=uniform(0, 1)), ["`n` must be an integer >= 1"]),
    (lambda: random(4, seed=-1), ["`seed` must be an integer >= 0"]),
    (lambda: quasirandom(4, method="lattice"), ["`method`='lattice'", "sobol"]),
    (lambda: random(4, {"l2": [1.0]}, l2=[2.0]), ["given twice"]),
])
def test_construction_errors(build, fragments):
    with pytest.raises(SpaceError) as err:
        build()
    for fragment in fragments:
        assert fragment in str(err.value)


def test_open_bounds_and_log_fields_accept_fitting_ranges():
    # loguniform on a field whose rule is (0, inf) is fine; so is a uniform whose
    # (excluded) high end equals the field's open bound.
    grid(momentum=[0.0, 0.9]).validate(LinearHP)
    (random(4, learning_rate=loguniform(1e-5, 1.0)) * random(4, momentum=uniform(0, 1))
     ).validate(LinearHP)
    random(4, steps=intrange(1, 10), batch_size=[None, 32]).validate(LinearHP)


def test_required_fields_and_base():
    with pytest.raises(SpaceError, match=r"required field\(s\) \['rate'\]"):
        grid(seed=[1, 2]).validate(Needs)
    with pytest.raises(SpaceError, match=r"\['rate'\]"):  # one branch of a sum misses it
        (grid(rate=[0.1]) + grid(seed=[3])).validate(Needs)
    hps = grid(seed=[1, 2]).settings(Needs, base=Needs(rate=0.5))
    assert hps == [Needs(rate=0.5, seed=1), Needs(rate=0.5, seed=2)]
    # A field named like an argument goes in through the mapping.
    hps = random(3, {"seed": intrange(0, 9)}, seed=4, rate=loguniform(0.1, 1)).settings(Needs)
    assert all(isinstance(h.seed, int) for h in hps)
    with pytest.raises(TypeError, match="expected a Needs"):
        grid().settings(Needs, base=LinearHP())
    with pytest.raises(TypeError, match="HParams subclass"):
        grid().validate(dict)


def test_cross_field_check_failure_names_the_setting():
    with pytest.raises(SpaceError, match=r"setting 1 .* `low` must be < `high`"):
        grid(low=[0.0, 2.0]).settings(Ordered)


# ------------------------------------------------------- types and equality
def test_static_fields_get_plain_python_types():
    space = (grid(width=[64.0, 128], optimizer=["sgd", "adamw"])
             * random(3, depth=intrange(1, 4), batch_size=choice([np.int64(32), 64])))
    for h in space.settings(MLPHP):
        assert type(h.width) is int and type(h.depth) is int and type(h.batch_size) is int
        assert type(h.optimizer) is str
        assert h.learning_rate.dtype == np.float32 and h.learning_rate.shape == ()
    assert {h.width for h in space.settings(MLPHP)} == {64, 128}
    assert len({h.static_key() for h in space.settings(MLPHP)}) <= 2 * 2 * 4 * 2


def test_settings_equal_hand_built_instances():
    space = grid(learning_rate=[0.1, 0.01], optimizer=["sgd", "adam"])
    assert space.settings(LinearHP) == [
        LinearHP(learning_rate=lr, optimizer=o)
        for lr in (0.1, 0.01) for o in ("sgd", "adam")]
    base = LinearHP(l2=0.5, steps=20)
    assert space.settings(LinearHP, base=base) == [
        base.replace(learning_rate=lr, optimizer=o)
        for lr in (0.1, 0.01) for o in ("sgd", "adam")]
    hps = random(4, seed=2, l2=loguniform(1e-6, 1.0)).settings(LinearHP)
    draws = [loguniform(1e-6, 1.0).sample_unit(u) for u in np.random.default_rng(
        [2, __import__("zlib").crc32(b"l2")]).random(4)]
    assert hps == [LinearHP(l2=v) for v in draws]


# ------------------------------------------------------------- description
def test_to_dict_is_json_and_stable():
    space = (grid(width=[64, 128], hidden=[(8, 8)]) + grid(depth=fixed(2))) * quasirandom(
        8, seed=3, method="halton", learning_rate=loguniform(1e-4, 1.0),
        depth2=intrange(1, 8, log=True))
    d = space.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d == (grid(width=[64, 128], hidden=[(8, 8)]) + grid(depth=fixed(2))).__mul__(
        quasirandom(8, seed=3, method="halton", learning_rate=loguniform(1e-4, 1.0),
                    depth2=intrange(1, 8, log=True))).to_dict()
    assert d["type"] == "product" and d["factors"][1] == {
        "type": "quasirandom", "n": 8, "seed": 3, "method": "halton", "axes": [
            {"field": "learning_rate", "type": "loguniform", "low": 1e-4, "high": 1.0},
            {"field": "depth2", "type": "intrange", "low": 1, "high": 8, "log": True}]}
    assert space.describe() == (
        "(grid(width=[64, 128], hidden=[(8, 8)]) + grid(depth=fixed(2))) * "
        "quasirandom(8, seed=3, method='halton', learning_rate=loguniform(0.0001, 1.0), "
        "depth2=intrange(1, 8, log=True))")
    assert repr(space) == space.describe()
    assert uniform(0, 1).to_dict() == {"type": "uniform", "low": 0.0, "high": 1.0}
    assert choice(["a", None, True]).to_dict() == {"type": "choice",
                                                   "values": ["a", None, True]}


def test_spaces_and_distributions_are_immutable():
    space = grid(width=[64])
    with pytest.raises(dataclasses.FrozenInstanceError):
        space.axes = ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        uniform(0, 1).low = 3.0
    assert {uniform(0, 1), uniform(0, 1), loguniform(0.5, 1)} == {uniform(0, 1),
                                                                 loguniform(0.5, 1)}


# The public names of spaces and distributions; their docstrings (methods included) run.
SPACE_NAMES = ["Distribution", "Space", "SpaceError", "choice", "fixed", "grid", "intrange",
               "loguniform", "quasirandom", "random", "uniform"]


def test_docstring_examples_run():
    import doctest

    names = {n: getattr(jaxhp, n) for n in SPACE_NAMES}
    globs = {**names, "LinearHP": LinearHP, "MLPHP": MLPHP, "np": np}
    assert all(obj.__doc__ and "Example:" in obj.__doc__ for obj in names.values())
    finder = doctest.DocTestFinder(recurse=True, exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS
                                   | doctest.IGNORE_EXCEPTION_DETAIL)
    for name, obj in names.items():
        for test in finder.find(obj, name, globs=dict(globs)):
            runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0 and result.attempted >= 20  # 25 today
