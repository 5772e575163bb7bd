"""Padded static fields: widths batched in one compiled program, each member exact.

One module-scoped sweep of 8 padded widths (dropout, AdamW: Adam's moments and
decoupled weight decay) is compared with solo ``jaxhp.train`` runs of two of its
settings; the other tests build tables or are refused before anything compiles.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import count_compiles

import jaxhp
from jaxhp.models import MLPHP, mlp_classifier

WIDTHS = [3, 5, 7, 8, 10, 12, 14, 16]
KEY = jax.random.key(0)


class PaddedMLP(MLPHP):
    width: int = jaxhp.static(16, low=1, integer=True, pad_to=16)


class AutoMLP(MLPHP):
    width: int = jaxhp.static(16, low=1, integer=True, pad_to="auto")


BASE = PaddedMLP(steps=6, batch_size=16, depth=2, dropout=0.25, learning_rate=1e-2,
                 weight_decay=0.1, optimizer="adamw")


@pytest.fixture(scope="module")
def small(digits):
    take = lambda part, n: {k: np.asarray(v)[:n] for k, v in part.items()}
    return jaxhp.Split(take(digits.train, 96), take(digits.val, 48), take(digits.test, 48))


@pytest.fixture(scope="module")
def padded(small):
    model = mlp_classifier(64, 10)
    with count_compiles() as c:
        result = jaxhp.sweep(model, jaxhp.grid(width=WIDTHS), small, key=KEY, base=BASE,
                             chunk_size="all", keep_params=True)
    return model, result, c.count


def test_eight_widths_compile_once(padded):
    _, result, compiles = padded
    assert compiles == 1 == result.compile_count
    assert len(result.groups) == 1
    assert result.groups[0].statics["width"] == "padded to 16"


def test_results_show_each_members_own_width(padded):
    _, result, _ = padded
    assert [result.setting(i).width for i in range(len(WIDTHS))] == WIDTHS
    assert list(result.cv_results()["param_width"]) == WIDTHS
    assert result.best("ce").setting.width in WIDTHS


def test_padded_member_equals_its_unpadded_solo_run(padded, small):
    model, result, _ = padded
    i = 0  # width 3, allocated at 16: both axes of the hidden-to-hidden layer padded
    hp = result.setting(i)
    assert type(hp.width) is int and jaxhp.padded_size(hp, "width") == hp.width
    solo = jaxhp.train(model, hp, small, key=jax.random.fold_in(KEY, 0))
    np.testing.assert_allclose(result.val["ce"][i, 0], solo.val["ce"], rtol=1e-5)
    np.testing.assert_allclose(result.train_loss[i, 0], solo.train_loss, rtol=1e-5)
    np.testing.assert_allclose(result.loss_curve[i, 0], solo.loss_curve, rtol=1e-5)
    kept = result.params(i)  # allocated at 16 in the sweep, cut to the member's shapes
    for a, b in zip(jax.tree_util.tree_leaves(kept),
                    jax.tree_util.tree_leaves(solo.state.params)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_auto_buckets_keep_each_value_within_half_its_allocation():
    table = jaxhp.grid(width=[8, 16, 24, 32, 100, 128, 256]).table(AutoMLP)
    by_width = {int(w): table.group_statics[g]["width"]
                for w, g in zip(table.columns["width"], table.groups)}
    # from the largest down, a value joins the open bucket if >= half its allocation;
    # a bucket of one value is an ordinary static group (no padding, no mask)
    assert by_width == {256: "padded to 256", 128: "padded to 256", 100: 100,
                        32: "padded to 32", 24: "padded to 32", 16: "padded to 32", 8: 8}
    assert table.n_groups == 4
    g32 = table.groups[table.columns["width"].tolist().index(16)]
    batch = table.batch(table.rows(g32))
    assert jaxhp.padded_size(batch, "width") == 32
    assert batch.width.tolist() == [16, 24, 32]
    alone = table.batch(table.rows(table.groups[0]))  # width 8, alone in its bucket
    assert alone.width == 8 and jaxhp.padded_size(alone, "width") == 8


def test_unit_mask_and_padded_size():
    table = jaxhp.grid(width=[3, 16]).table(PaddedMLP)
    batch = table.batch(table.rows(0))
    assert jaxhp.padded_size(batch, "width") == 16
    member = jax.tree_util.tree_map(lambda a: a[0], batch)
    assert jaxhp.unit_mask(member, "width").tolist() == [True] * 3 + [False] * 13
    plain = PaddedMLP(width=5)  # a solo setting: the value, unpadded
    assert jaxhp.padded_size(plain, "width") == 5
    assert jaxhp.unit_mask(plain, "width", jnp.float32).tolist() == [1.0] * 5
    with pytest.raises(ValueError, match=r"`dropout` is not an integer static field"):
        jaxhp.padded_size(plain, "dropout")


@pytest.mark.parametrize("kwargs, message", [
    ({"integer": False, "low": 1}, r"`pad_to`=8 needs integer=True"),
    ({"integer": True}, r"`pad_to`=8 needs low >= 1, got low=None"),
    ({"integer": True, "low": 0}, r"needs low >= 1, got low=0"),
    ({"integer": True, "low": 1, "pad_to": "max"}, r"`pad_to`='max': pad_to is an int"),
    ({"integer": True, "low": 1, "pad_to": 0}, r"`pad_to`=0: .* must be >= 1"),
])
def test_bad_declarations_are_refused(kwargs, message):
    kwargs = {"pad_to": 8, **kwargs}
    with pytest.raises(ValueError, match=message):
        jaxhp.static(4, **kwargs)
    with pytest.raises(ValueError, match=r"default 9 exceeds `pad_to`=8"):
        jaxhp.static(9, low=1, integer=True, pad_to=8)


def test_bad_values_and_models_are_refused_before_compiling(small):
    with count_compiles() as c:
        with pytest.raises(jaxhp.HParamsError,
                           match=r"`width`=17: must be <= pad_to=16 \(a padded field"):
            PaddedMLP(width=17)
        with pytest.raises(jaxhp.SpaceError, match=r"`width`: choice\(\[4, 20\]\) includes "
                           r"a value the field rejects: `width`=20: must be <= pad_to=16"):
            jaxhp.grid(width=[4, 20]).table(PaddedMLP)
        plain = mlp_classifier(64, 10)._replace(param_mask=None, name="plain_mlp")
        with pytest.raises(jaxhp.ModelError, match=r"model 'plain_mlp' does not declare "
                           r"padding support, but `width` \(padded to 16\)"):
            jaxhp.sweep(plain, jaxhp.grid(width=[4, 8]), small, key=KEY, base=BASE)
        with pytest.raises(TypeError, match=r"`param_mask`=3: must be a function"):
            jaxhp.Model(lambda k, h: {}, lambda p, b, h: 0.0, None, param_mask=3)
    assert c.count == 0


class ToyHP(jaxhp.HParams):
    learning_rate: float = jaxhp.tunable(0.05, low=0, low_open=True)
    width: int = jaxhp.static(4, low=1, integer=True, pad_to=8)
    steps: int = jaxhp.static(5, low=1, integer=True)


def _toy_model():
    """A plain-JAX model opting in to padding: its init fills the padded entries (so
    only the engine's masks keep them out) and its loss penalises every weight."""
    import optax

    def init(key, hp):
        n = jaxhp.padded_size(hp, "width")
        w = jax.random.normal(key, (n, 3))  # unit-major: the real rows match unpadded
        return {"w1": w.T * 0.5, "w2": jnp.full((n,), 0.3)}

    def loss(params, batch, hp):
        h = jnp.tanh(batch["x"] @ params["w1"]) * jaxhp.unit_mask(hp, "width", jnp.float32)
        penalty = 0.1 * (jnp.sum(params["w1"] ** 2) + jnp.sum(params["w2"] ** 2))
        return jnp.mean((h @ params["w2"] - batch["y"]) ** 2) + penalty, {}

    def param_mask(hp, params):
        del params
        units = jaxhp.unit_mask(hp, "width")
        return {"w1": units[None, :], "w2": units}

    return jaxhp.Model(init, loss, lambda hp: optax.adam(hp.learning_rate), hparams=ToyHP,
                       param_mask=param_mask, name="toy")


def test_user_model_masks_declared_by_param_mask():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = np.sin(x.sum(1)).astype(np.float32)
    part = lambda a, b: {"x": x[a:b], "y": y[a:b]}
    split = jaxhp.Split(part(0, 24), part(24, 32), part(32, 40))
    model = _toy_model()
    result = jaxhp.sweep(model, jaxhp.grid(width=[2, 5, 8]), split, key=KEY,
                         keep_params=True)
    assert result.compile_count == 1
    solo = jaxhp.train(model, result.setting(0), split, key=jax.random.fold_in(KEY, 0))
    np.testing.assert_allclose(result.val["loss"][0, 0], solo.val["loss"], rtol=1e-5)
    np.testing.assert_allclose(result.params(0)["w1"], solo.state.params["w1"], rtol=1e-5)


def _adapter(kind):
    """A one-hidden-layer module of padded width through an adapter, with its masks."""
    mse = lambda out, batch, hp: jnp.mean((out[:, 0] - batch["y"]) ** 2)
    opt = lambda hp: __import__("optax").adam(hp.learning_rate)
    units = lambda hp: jaxhp.unit_mask(hp, "width")
    if kind == "linen":
        import flax.linen as nn

        class Net(nn.Module):
            hp: ToyHP

            @nn.compact
            def __call__(self, x):
                h = nn.tanh(nn.Dense(jaxhp.padded_size(self.hp, "width"))(x))
                return nn.Dense(1)(h * jaxhp.unit_mask(self.hp, "width", h.dtype))

        mask = lambda hp, p: {"Dense_0": {"kernel": units(hp)[None], "bias": units(hp)},
                              "Dense_1": {"kernel": units(hp)[:, None], "bias": None}}
        return jaxhp.interop.from_linen(Net, (1, 3), loss=mse, optimizer=opt,
                                        hparams=ToyHP, param_mask=mask)
    if kind == "nnx":
        from flax import nnx

        class Mod(nnx.Module):
            def __init__(self, hp, rngs):
                n, self.hp = jaxhp.padded_size(hp, "width"), nnx.data(hp)
                self.l1, self.l2 = nnx.Linear(3, n, rngs=rngs), nnx.Linear(n, 1, rngs=rngs)

            def __call__(self, x):
                return self.l2(jnp.tanh(self.l1(x))
                               * jaxhp.unit_mask(self.hp, "width", x.dtype))

        mask = lambda hp, p: {"l1": {"kernel": units(hp)[None], "bias": units(hp)},
                              "l2": {"kernel": units(hp)[:, None], "bias": None}}
        return jaxhp.interop.from_nnx(Mod, loss=mse, optimizer=opt, hparams=ToyHP,
                                      param_mask=mask)
    import equinox as eqx

    class Eq(eqx.Module):
        l1: eqx.nn.Linear
        l2: eqx.nn.Linear
        hp: ToyHP

        def __init__(self, hp, key):
            n, (k1, k2) = jaxhp.padded_size(hp, "width"), jax.random.split(key)
            self.l1, self.l2 = eqx.nn.Linear(3, n, key=k1), eqx.nn.Linear(n, 1, key=k2)
            self.hp = hp

        def __call__(self, x):
            return self.l2(jnp.tanh(self.l1(x)) * jaxhp.unit_mask(self.hp, "width", x.dtype))

    def mask(hp, params):
        empty = jax.tree_util.tree_map(lambda _: None, params)
        return eqx.tree_at(lambda m: (m.l1.weight, m.l1.bias, m.l2.weight), empty,
                           (units(hp)[:, None], units(hp), units(hp)[None, :]),
                           is_leaf=lambda v: v is None)

    return jaxhp.interop.from_equinox(Eq, loss=mse, optimizer=opt, hparams=ToyHP,
                                      param_mask=mask)


@pytest.mark.parametrize("kind", ["linen", "nnx", "equinox"])
def test_adapters_pass_param_mask_to_the_model(kind):
    model = _adapter(kind)
    assert callable(model.param_mask)
    table = jaxhp.grid(width=[2, 5, 8]).table(ToyHP)
    member = table.batch(table.rows(0))[1]  # width 5 of a group allocated at 8
    batch = {"x": jnp.zeros((4, 3)), "y": jnp.zeros(4)}

    def traced(hp):  # hp.width traced, as in the compiled program
        params = model.init(KEY, hp)
        masks = model.param_mask(hp, params)  # fits the parameters, leaf by leaf
        jax.tree_util.tree_map(lambda m, p: p if m is None else jnp.where(m, p, 0.0),
                               masks, params, is_leaf=lambda m: m is None)
        return params, model.loss(params, batch, hp, key=KEY)[0], masks

    params, loss, _ = jax.eval_shape(traced, member)
    shapes = sorted(a.shape for a in jax.tree_util.tree_leaves(params))
    assert shapes in (sorted([(1,), (8,), (3, 8), (8, 1)]),   # Linen, NNX: (in, out)
                      sorted([(1,), (8,), (8, 3), (1, 8)]))   # Equinox: (out, in)
    assert loss.shape == ()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    part = {"x": x, "y": x.sum(1)}
    with count_compiles() as c, pytest.raises(
            jaxhp.ModelError, match=r"does not declare padding support, but `width` "
                                    r"\(padded to 8\) of ToyHP is padded"):
        jaxhp.sweep(model._replace(param_mask=None), jaxhp.grid(width=[2, 5]),
                    jaxhp.Split(part, part, part), key=KEY)
    assert c.count == 0
    with pytest.raises(TypeError, match=r"`param_mask` must be callable or None, got int"):
        jaxhp.interop.from_nnx(lambda hp, rngs: None, loss=len, optimizer=len,
                               param_mask=1)


def test_pbt_refuses_a_padded_field_before_compiling():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype(np.float32)
    part = {"x": x, "y": x.sum(1)}
    with count_compiles() as c:
        with pytest.raises(ValueError, match=r"pbt\(\): \['width'\] padded \(static\(\.\.\., "
                           r"pad_to=\.\.\.\)\): exploit copies a member's parameters"):
            jaxhp.pbt(_toy_model(), jaxhp.grid(width=[2, 5], learning_rate=[0.1, 0.2]),
                      jaxhp.Split(part, part, part), key=KEY, ready_every=2)
    assert c.count == 0


def test_successive_halving_runs_a_padded_group_each_row_its_own_width(small):
    """Four widths allocated at 16 in one group and one program; a row (at the rung where
    it stopped) equals its setting trained alone at its own width."""
    model = mlp_classifier(64, 10)
    base = PaddedMLP(steps=6, batch_size=16, depth=1, learning_rate=1e-2)
    r = jaxhp.successive_halving(model, jaxhp.grid(width=[3, 5, 9, 12]), small, key=KEY,
                                 base=base, min_steps=2, max_steps=6, eta=2, metric="ce")
    g, = r.groups
    assert g.statics["width"] == "padded to 16" and r.compile_count == 1
    assert sorted(r.setting(i).width for i in range(4)) == [3, 5, 9, 12]
    for i in (0, 3):  # the narrowest, padded the most, and the widest
        solo = jaxhp.train(model, r.setting(i), small, key=jax.random.fold_in(KEY, 0))
        np.testing.assert_allclose(r.val["ce"][i, 0], solo.val["ce"], rtol=1e-5)
