"""Models from Flax Linen, Flax NNX and Equinox (jaxhp.interop), and jaxhp.nn.dropout.

Each adapter is swept once per module (a Linen CNN, an NNX MLP, an Equinox MLP
on a few hundred digits, a static width, a tunable learning rate and a tunable
dropout rate); the tests read those results, so they measure behaviour rather
than XLA compile time. The README's "Your own model" blocks run in tests/test_readme.py
(each asserts its validation accuracy).
"""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import count_compiles

import jaxhp
from jaxhp import HParams, static, tunable

SEED = 1
SPACE = dict(learning_rate=[1e-2, 3e-2], dropout=[0.0, 0.3], width=[4, 8])
ADAPTERS = ("linen", "nnx", "equinox")


class HP(HParams):
    """The hyperparameters of the test modules."""

    learning_rate: float = tunable(1e-2, low=0, low_open=True, log=True)
    dropout: float = tunable(0.0, low=0, high=1)
    width: int = static(4, low=1, integer=True)
    steps: int = static(8, low=1, integer=True)
    batch_size: int = static(32, low=1, integer=True)


def ce(out, batch, hp):
    return optax.softmax_cross_entropy_with_integer_labels(out, batch["y"]).mean()


def accuracy(out, batch, hp):
    return {"accuracy": jnp.mean(jnp.argmax(out, -1) == batch["y"]), "ce": ce(out, batch, hp)}


def adam(hp):
    return optax.adam(hp.learning_rate)


KW = dict(loss=ce, optimizer=adam, metrics=accuracy, hparams=HP,
          directions={"accuracy": "max", "ce": "min"})


def linen_model(split):
    nn = pytest.importorskip("flax.linen")

    class CNN(nn.Module):
        width: int
        rate: float  # a tunable stored in a module attribute: a traced scalar

        @nn.compact
        def __call__(self, x, train: bool = False):
            x = x.reshape(x.shape[0], 8, 8, 1)
            x = nn.relu(nn.Conv(self.width, (3, 3))(x))
            x = x.reshape(x.shape[0], -1)
            x = jaxhp.nn.dropout(x, self.rate, self.make_rng("dropout") if train else None)
            return nn.Dense(10)(x)

    return jaxhp.interop.from_linen(lambda hp: CNN(hp.width, hp.dropout),
                                    split.train["x"][:1], **KW)


def nnx_model(split):
    nnx = pytest.importorskip("flax.nnx")

    class MLP(nnx.Module):
        def __init__(self, width, rate, rngs):
            self.hidden = nnx.Linear(64, width, rngs=rngs)
            self.out = nnx.Linear(width, 10, rngs=rngs)
            self.rate, self.rngs, self.deterministic = rate, rngs, False

        def __call__(self, x):
            key = None if self.deterministic else self.rngs.dropout()
            return self.out(jaxhp.nn.dropout(nnx.relu(self.hidden(x)), self.rate, key))

    return jaxhp.interop.from_nnx(lambda hp, rngs: MLP(hp.width, hp.dropout, rngs), **KW)


def equinox_module():
    eqx = pytest.importorskip("equinox")

    class MLP(eqx.Module):
        hidden: eqx.nn.Linear
        out: eqx.nn.Linear
        drop: eqx.nn.Dropout
        keep: jax.Array

        def __init__(self, width, rate, key):
            k1, k2 = jax.random.split(key)
            self.hidden = eqx.nn.Linear(64, width, key=k1)
            self.out = eqx.nn.Linear(width, 10, key=k2)
            self.drop = eqx.nn.Dropout(rate)  # the rate is an array leaf of the module
            self.keep = 1.0 - rate            # computed from a tunable: not trained either

        def __call__(self, x, *, key=None):
            return self.out(self.drop(jax.nn.relu(self.hidden(x)), key=key))

    return MLP


def equinox_model(split):
    mlp = equinox_module()
    return jaxhp.interop.from_equinox(lambda hp, key: mlp(hp.width, hp.dropout, key), **KW)


BUILDERS = {"linen": linen_model, "nnx": nnx_model, "equinox": equinox_model}


@pytest.fixture(scope="module")
def split():
    return jaxhp.datasets.load("digits", key=jax.random.key(0), fractions=(0.2, 0.1, 0.7))


class Case:
    """One adapter's model and its sweep, computed once per module."""

    def __init__(self, name, split):
        self.name = name
        self.model = BUILDERS[name](split)
        with count_compiles() as c:
            self.result = jaxhp.sweep(self.model, jaxhp.grid(**SPACE), split,
                                      key=jax.random.key(SEED), base=HP(), chunk_size=4)
        self.compiles = c.count


_CASES: dict = {}


@pytest.fixture(scope="module", params=ADAPTERS)
def case(request, split):
    if request.param not in _CASES:
        _CASES[request.param] = Case(request.param, split)
    return _CASES[request.param]


# ------------------------------------------------------------------ the sweep
def test_one_compile_per_static_group(case):
    assert len(case.result.groups) == 2  # width 4 and width 8
    assert case.compiles == case.result.compile_count == 2


def test_a_member_equals_its_solo_run(case, split):
    i = next(i for i in range(len(case.result.settings))
             if case.result.setting(i).dropout > 0 and case.result.setting(i).width == 8)
    hp = case.result.setting(i)
    solo = jaxhp.train(case.model, hp, split, key=jax.random.fold_in(jax.random.key(SEED), 0))
    for metric in ("ce", "accuracy"):
        np.testing.assert_allclose(case.result.val[metric][i, 0], solo.val[metric], rtol=1e-5)
    np.testing.assert_allclose(case.result.train_loss[i, 0], solo.train_loss, rtol=1e-5)


def test_the_traced_tunables_reach_the_module(case):
    r = case.result
    loss = {(float(s.learning_rate), float(s.dropout), s.width): r.train_loss[i, 0]
            for i, s in enumerate(r.settings)}
    lr0, lr1 = (float(np.float32(v)) for v in SPACE["learning_rate"])
    d0, d1 = (float(np.float32(v)) for v in SPACE["dropout"])
    assert loss[(lr0, d0, 8)] != loss[(lr0, d1, 8)]  # dropout changes training
    assert loss[(lr0, d0, 8)] != loss[(lr1, d0, 8)]  # and so does the learning rate
    assert (r.status == "ok").all()


# ------------------------------------------------------------- train vs eval
def test_dropout_is_on_in_training_and_off_at_evaluation(case, split):
    model, batch = case.model, jax.tree_util.tree_map(lambda a: a[:64], split.val)
    hp = HP(dropout=0.5, width=4)
    params = model.init(jax.random.key(0), hp)
    k1, k2 = jax.random.key(1), jax.random.key(2)

    @jax.jit  # one program for all five values
    def values(params):
        loss = lambda h, k: model.loss(params, batch, h, key=k)[0]
        return (loss(hp, k1), loss(hp, k2), loss(hp, None), loss(hp.replace(dropout=0.0), k1),
                model.metrics(params, batch, hp)["ce"])

    train1, train2, evaluation, no_drop, metric = map(float, values(params))
    assert train1 != train2  # training: the mask depends on the key
    # evaluation: no dropout at all, i.e. the training loss at rate 0 (which drops nothing)
    np.testing.assert_allclose(evaluation, no_drop, rtol=1e-6)
    np.testing.assert_allclose(metric, no_drop, rtol=1e-6)


# ------------------------------------------------- parameters are the weights
def test_parameters_are_the_module_weights_only(case, split):
    params = jax.eval_shape(case.model.init, jax.random.key(0), HP(dropout=0.25, width=4))
    shapes = sorted(tuple(x.shape) for x in jax.tree_util.tree_leaves(params))
    expected = {  # the layers' kernels and biases; never a scalar rate
        "linen": [(4,), (10,), (3, 3, 1, 4), (256, 10)],
        "nnx": [(4,), (10,), (4, 10), (64, 4)],
        "equinox": [(4,), (10,), (4, 64), (10, 4)],
    }
    assert shapes == sorted(expected[case.name])


def test_equinox_keeps_arrays_computed_from_tunables_out_of_the_parameters():
    eqx = pytest.importorskip("equinox")
    mlp = equinox_module()
    model = jaxhp.interop.from_equinox(lambda hp, key: mlp(hp.width, hp.dropout, key), **KW)
    hp = HP(dropout=0.25)
    module = mlp(hp.width, hp.dropout, jax.random.key(0))
    # The trap: Equinox's usual filter would train the rate and 1 - rate.
    naive = [np.asarray(x) for x in jax.tree_util.tree_leaves(eqx.filter(module, eqx.is_array))]
    assert any(x.shape == () and x == np.float32(0.25) for x in naive)
    params = model.init(jax.random.key(0), hp)
    assert params.drop.p is None and params.keep is None
    assert params.hidden.weight is not None and params.out.bias is not None
    leaves = jax.tree_util.tree_leaves(params)
    assert len(leaves) == 4 and all(x.ndim >= 1 for x in leaves)
    np.testing.assert_array_equal(params.hidden.weight, module.hidden.weight)


# --------------------------------------------------------------- the contract
def test_a_batch_without_the_input_entry_is_refused_before_compiling(split):
    pytest.importorskip("equinox")
    mlp = equinox_module()
    model = jaxhp.interop.from_equinox(lambda hp, key: mlp(hp.width, hp.dropout, key),
                                       input="image", **KW)
    with count_compiles() as c, pytest.raises(jaxhp.DataError, match=r'split.train\["image"\]'):
        jaxhp.train(model, HP(), split, key=jax.random.key(0))
    assert c.count == 0


@pytest.mark.parametrize("adapter", ["from_linen", "from_nnx", "from_equinox"])
def test_arguments_of_the_wrong_kind_are_refused(adapter):
    fn = getattr(jaxhp.interop, adapter)
    args = ((1, 1),) if adapter == "from_linen" else ()
    with pytest.raises(TypeError, match="`loss` must be callable"):
        fn(lambda hp: None, *args, loss=3, optimizer=adam)
    with pytest.raises(TypeError, match="`input`"):
        fn(lambda hp: None, *args, loss=ce, optimizer=adam, input=0)


@pytest.mark.parametrize(("adapter", "missing"), [("from_linen", "flax.linen"),
                                                  ("from_nnx", "flax.nnx"),
                                                  ("from_equinox", "equinox")])
def test_a_missing_library_names_the_interop_extra(adapter, missing, monkeypatch):
    monkeypatch.setitem(sys.modules, missing, None)
    args = ((1, 64),) if adapter == "from_linen" else ()
    with pytest.raises(ImportError, match=r'pip install "jaxhp\[interop\]"'):
        getattr(jaxhp.interop, adapter)(lambda hp: None, *args, loss=ce, optimizer=adam)


def test_importing_jaxhp_imports_neither_flax_nor_equinox():
    code = ("import sys, jaxhp, jaxhp.interop, jaxhp.nn; "
            "print([m for m in ('flax', 'equinox') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize(("module", "name"), [(jaxhp.interop, n) for n in jaxhp.interop.__all__]
                         + [(jaxhp.nn, n) for n in jaxhp.nn.__all__])
def test_public_names_are_documented(module, name):
    assert len((getattr(module, name).__doc__ or "").strip()) >= 20
    assert name in dir(module)
    assert "interop" in jaxhp.__all__ and "nn" in jaxhp.__all__


# ------------------------------------------------------------- jaxhp.nn.dropout
def test_dropout_preserves_the_mean_and_drops_the_rate():
    x = jnp.ones((200_000,))
    y = jaxhp.nn.dropout(x, 0.3, jax.random.key(0))
    assert abs(float(jnp.mean(y == 0)) - 0.3) < 0.005
    assert abs(float(jnp.mean(y)) - 1.0) < 0.01
    np.testing.assert_allclose(np.unique(np.asarray(y)), [0.0, 1 / 0.7], rtol=1e-6)
    assert y.dtype == x.dtype and y.shape == x.shape


def test_dropout_is_the_identity_without_a_key_and_at_rate_zero():
    x = jax.random.normal(jax.random.key(0), (5, 7))
    assert jaxhp.nn.dropout(x, 0.5, None) is x
    np.testing.assert_array_equal(jaxhp.nn.dropout(x, 0.0, jax.random.key(1)), x)


def test_dropout_at_rate_one_is_zero_without_nan_also_in_gradients():
    x = jnp.arange(1.0, 7.0)
    f = lambda x, r: jnp.sum(jaxhp.nn.dropout(x, r, jax.random.key(0)) ** 2)
    np.testing.assert_array_equal(jaxhp.nn.dropout(x, 1.0, jax.random.key(0)), 0.0)
    g = jax.grad(f)(x, jnp.float32(1.0))
    assert np.isfinite(np.asarray(g)).all() and not np.asarray(g).any()


def test_dropout_under_vmap_over_a_traced_rate():
    x = jnp.ones((50_000,))
    rates = jnp.array([0.0, 0.25, 0.5, 0.9, 1.0])
    ys = jax.jit(jax.vmap(lambda r: jaxhp.nn.dropout(x, r, jax.random.key(3))))(rates)
    np.testing.assert_allclose(np.mean(np.asarray(ys) == 0, axis=1), rates, atol=0.01)
    np.testing.assert_allclose(np.mean(np.asarray(ys), axis=1)[:4], 1.0, atol=0.03)
    # each member equals the unbatched call with its own rate
    np.testing.assert_array_equal(ys[2], jaxhp.nn.dropout(x, 0.5, jax.random.key(3)))


def test_dropout_gradient_wrt_x_is_the_mask_scaled():
    x = jax.random.normal(jax.random.key(0), (1000,))
    key = jax.random.key(5)
    g = jax.grad(lambda x: jnp.sum(jaxhp.nn.dropout(x, 0.4, key)))(x)
    kept = np.asarray(jaxhp.nn.dropout(jnp.ones_like(x), 0.4, key)) != 0
    np.testing.assert_allclose(np.asarray(g), np.where(kept, 1 / 0.6, 0.0), rtol=1e-6)
    # no gradient flows to the rate (the mask is discrete)
    gr = jax.grad(lambda r: jnp.sum(jaxhp.nn.dropout(x, r, key)))(jnp.float32(0.4))
    assert float(gr) == 0.0


def test_dropout_refuses_a_concrete_rate_out_of_range():
    with pytest.raises(ValueError, match=r"`rate`=1.5: must be a scalar in \[0, 1\]"):
        jaxhp.nn.dropout(jnp.ones(3), 1.5, jax.random.key(0))


# ------------------------------------------------ library dropout, traced rate
def test_library_dropout_with_a_tunable_rate_is_refused_naming_the_field(split):
    nn = pytest.importorskip("flax.linen")
    nnx = pytest.importorskip("flax.nnx")

    class LinenMLP(nn.Module):
        rate: float

        @nn.compact
        def __call__(self, x, train: bool = False):
            return nn.Dense(10)(nn.Dropout(self.rate, deterministic=not train)(x))

    class NnxMLP(nnx.Module):
        def __init__(self, rate, rngs):
            self.dense, self.drop = nnx.Linear(64, 10, rngs=rngs), nnx.Dropout(rate, rngs=rngs)

        def __call__(self, x):
            return self.dense(self.drop(x))

    models = [jaxhp.interop.from_linen(lambda hp: LinenMLP(hp.dropout), (1, 64), **KW),
              jaxhp.interop.from_nnx(lambda hp, rngs: NnxMLP(hp.dropout, rngs), **KW)]
    for model in models:
        with count_compiles() as c, pytest.raises(jaxhp.ModelError, match=r"`dropout`"):
            jaxhp.train(model, HP(dropout=0.2), split, key=jax.random.key(0))
        assert c.count == 0


# ------------------------------------------------------- model state (BatchNorm)
# SGD, not Adam: behind BatchNorm the gradient of a first-layer weight of a (nearly)
# constant input pixel is pure float noise (BatchNorm's input gradients sum to zero over
# the batch), and Adam scales noise up to full +-lr steps, so a vmapped member and its
# solo run part by ~5e-4 in validation CE after 8 steps. SGD keeps noise noise.
def sgd(hp):
    return optax.sgd(hp.learning_rate, momentum=0.9)


KW_BN = {**KW, "optimizer": sgd}


def linen_bn(split, has_state=True):
    nn = pytest.importorskip("flax.linen")

    class Net(nn.Module):
        width: int

        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.Dense(self.width, use_bias=False)(x)  # BatchNorm brings the bias
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
            return nn.Dense(10)(nn.relu(x))

    return jaxhp.interop.from_linen(lambda hp: Net(hp.width), (1, 64), has_state=has_state,
                                    **KW_BN)


def nnx_bn(split, has_state=True):
    nnx = pytest.importorskip("flax.nnx")

    class Net(nnx.Module):
        def __init__(self, width, rngs):
            self.hidden = nnx.Linear(64, width, use_bias=False, rngs=rngs)
            self.bn = nnx.BatchNorm(width, momentum=0.9, rngs=rngs)
            self.out = nnx.Linear(width, 10, rngs=rngs)

        def __call__(self, x):
            return self.out(nnx.relu(self.bn(self.hidden(x))))

    return jaxhp.interop.from_nnx(lambda hp, rngs: Net(hp.width, rngs), has_state=has_state,
                                  **KW_BN)


def equinox_bn(split, has_state=True):
    eqx = pytest.importorskip("equinox")

    class Net(eqx.Module):
        hidden: eqx.nn.Linear
        bn: eqx.nn.BatchNorm
        out: eqx.nn.Linear

        def __init__(self, width, key):
            k1, k2 = jax.random.split(key)
            self.hidden = eqx.nn.Linear(64, width, use_bias=False, key=k1)
            self.bn = eqx.nn.BatchNorm(width, axis_name="batch", momentum=0.9, mode="ema")
            self.out = eqx.nn.Linear(width, 10, key=k2)

        def __call__(self, x, state, *, key=None):
            h, state = self.bn(self.hidden(x), state)
            return self.out(jax.nn.relu(h)), state

    return jaxhp.interop.from_equinox(lambda hp, key: Net(hp.width, key), has_state=has_state,
                                      **KW_BN)


BN_BUILDERS = {"linen": linen_bn, "nnx": nnx_bn, "equinox": equinox_bn}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_module_with_state_needs_has_state(adapter, split):
    model = BN_BUILDERS[adapter](split, has_state=False)
    with count_compiles() as c, pytest.raises(jaxhp.ModelError, match="has_state=True"):
        jaxhp.train(model, HP(), split, key=jax.random.key(0))
    assert c.count == 0


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_batchnorm_statistics_are_model_state(adapter, split):
    model = BN_BUILDERS[adapter](split)
    assert model.has_state
    hp = HP(width=8, learning_rate=0.1)
    with count_compiles() as c:
        result = jaxhp.sweep(model, jaxhp.grid(learning_rate=[0.03, 0.1]), split,
                             key=jax.random.key(SEED), base=hp, keep_params=True)
    assert c.count == result.compile_count == 1
    params, state = model.init(jax.random.key(0), hp)
    # kernel, BatchNorm scale and bias, kernel, bias; the state: running mean and variance
    assert sorted(x.size for x in jax.tree_util.tree_leaves(params)) == [8, 8, 10, 80, 512]
    stats = [x for x in jax.tree_util.tree_leaves(state) if x.dtype == np.float32]
    assert [x.shape for x in stats] == [(8,), (8,)]
    run = jaxhp.train(model, hp, split, key=jax.random.fold_in(jax.random.key(SEED), 0))
    for metric in ("ce", "accuracy"):
        np.testing.assert_allclose(result.val[metric][1, 0], run.val[metric], rtol=1e-5)
    # training moved the running statistics; evaluation reads them
    trained = run.state.model_state
    for a, b in zip(jax.tree_util.tree_leaves(trained), jax.tree_util.tree_leaves(state)):
        if np.asarray(a).dtype == np.float32:
            assert not np.allclose(a, b)
    ev = jaxhp.evaluate(model, run.state.params, hp, split.val, state=trained)
    np.testing.assert_allclose(ev["ce"], run.val["ce"], rtol=1e-5)
    initial = jaxhp.evaluate(model, run.state.params, hp, split.val, state=state)
    assert not np.isclose(initial["ce"], run.val["ce"], rtol=1e-3)


def test_equinox_factory_returning_make_with_state_pair_is_refused_with_the_fix(split):
    eqx = pytest.importorskip("equinox")

    class Net(eqx.Module):
        bn: eqx.nn.BatchNorm

        def __init__(self):
            self.bn = eqx.nn.BatchNorm(64, axis_name="batch", mode="ema")

        def __call__(self, x, state):
            return self.bn(x, state)

    model = jaxhp.interop.from_equinox(lambda hp, key: eqx.nn.make_with_state(Net)(),
                                       has_state=True, **KW_BN)
    with pytest.raises(jaxhp.ModelError, match="make_with_state.*collects the state itself"):
        jaxhp.train(model, HP(), split, key=jax.random.key(0))
