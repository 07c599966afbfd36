"""Flax NNX modules over the jax backend: each layer equals the backend's op with the same weights (channels-last
at the boundary), jit and nnx.grad train them, zoo checkpoints round-trip into nnx modules, and a missing flax
names the extra."""
from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
optax = pytest.importorskip("optax")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from convnn.config import ConvNNConfig  # noqa: E402
from convnn.backends.jax.nnx import Branching2d, ConvNN1d, ConvNN2d, ConvNNAttention, jax_backend  # noqa: E402
from convnn.backends.jax.nnx_zoo import from_checkpoint, from_zoo, zoo_layer  # noqa: E402

TINY_VGG = ["-o", "layer=branching", "-o", "width=0.0625", "-o", "head=light", "-o", "k=4"]
TINY_VIT = {"depth": 1, "dim": 16, "mlp_dim": 16, "heads": 2, "attention": "convnn", "k": 4}


def _normal(seed: int, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), shape, dtype=jnp.float32)


def _nchw(x: jax.Array) -> jax.Array:
    return jnp.transpose(x, (0, 3, 1, 2))


def _nhwc(x: jax.Array) -> np.ndarray:
    return np.asarray(jnp.transpose(x, (0, 2, 3, 1)))


# ----------------------------------------------------------------------------- layers against the backend's ops
def test_convnn2d_equals_the_backend_op_on_channels_last_maps():
    layer = ConvNN2d(3, 5, 3, rngs=nnx.Rngs(0), select="blend", metric="euclidean", aggregate_coords=True)
    layer.bias[...] = _normal(9, (5,))  # the zero init would hide a bias left out
    x = _normal(1, (2, 6, 5, 3))  # H != W catches a swapped transpose
    weight = jnp.transpose(layer.kernel[...], (2, 1, 0))
    assert weight.shape == (5, 3 + 2, 3)  # [O, C + 2 coordinate channels, K]
    want = jax_backend().convnn2d(_nchw(x), weight, layer.bias[...], layer.config)
    got = layer(x)
    assert got.shape == (2, 6, 5, 5)
    np.testing.assert_array_equal(np.asarray(got), _nhwc(want))


def test_convnn1d_equals_the_backend_op_on_channels_last_sequences():
    layer = ConvNN1d(4, 6, 3, rngs=nnx.Rngs(1), select="position")
    layer.bias[...] = _normal(8, (6,))
    x = _normal(2, (2, 7, 4))
    want = jax_backend().convnn1d(jnp.transpose(x, (0, 2, 1)), jnp.transpose(layer.kernel[...], (2, 1, 0)),
                                  layer.bias[...], layer.config)
    np.testing.assert_array_equal(np.asarray(layer(x)), np.asarray(jnp.transpose(want, (0, 2, 1))))


def test_convnn_attention_equals_the_backend_op_and_its_eval_draw_is_the_seeded_one():
    x = _normal(4, (2, 12, 8))
    dense = ConvNNAttention(2, 8, 4, rngs=nnx.Rngs(3), deterministic=True)
    params = {w: getattr(dense, name).kernel[...].T for w, name in (("wq", "query"), ("wk", "key"),
                                                                    ("wv", "value"), ("wo", "out"))}
    params["taps"] = dense.taps[...].T
    want = jax_backend().convnn_attention(x, params, dense.config, heads=2)
    np.testing.assert_array_equal(np.asarray(dense(x)), np.asarray(want))
    sampled = ConvNNAttention(2, 8, 4, sampling="random", num_samples=6, sample_seed=11, rngs=nnx.Rngs(3))
    sampled.eval()
    want = jax_backend().convnn_attention(x, sampled.zoo_params(), sampled.config, heads=2, rng=11)
    np.testing.assert_array_equal(np.asarray(sampled(x)), np.asarray(want))
    sampled.train()  # training draws fresh candidates from the stream on every call
    first, second = sampled(x), sampled(x)
    assert not np.array_equal(np.asarray(first), np.asarray(second))


# ----------------------------------------------------------------------------- jit and grad
class _Tiny(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.convnn = ConvNN2d(3, 4, 4, rngs=rngs, sampling="random", num_samples=16)
        self.head = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(jax.nn.relu(self.convnn(x)).mean(axis=(1, 2)))


def test_jit_and_nnx_grad_train_a_model_with_a_sampled_convnn_layer():
    model = _Tiny(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)
    x, labels = _normal(5, (8, 6, 6, 3)), jnp.arange(8) % 3

    def loss_fn(m: _Tiny) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(m(x), labels).mean()

    @nnx.jit
    def step(m: _Tiny, opt: nnx.Optimizer) -> jax.Array:
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        opt.update(m, grads)
        return loss

    kernel0 = np.asarray(model.convnn.kernel[...])
    model.eval()  # the fixed evaluation draw makes the before/after losses comparable
    before = float(loss_fn(model))
    model.train()
    losses = [float(step(model, optimizer)) for _ in range(6)]
    model.eval()
    after = float(loss_fn(model))
    assert all(np.isfinite(losses)) and after < before
    assert not np.allclose(np.asarray(model.convnn.kernel[...]), kernel0)  # gradients reached the ConvNN taps


# ----------------------------------------------------------------------------- zoo models and checkpoints
@pytest.fixture(scope="module")
def vgg_run(tmp_path_factory):
    """A run folder written by `convnn train` (the numba backend, whose compiled kernels are cached on disk; the
    checkpoint format is the same for every backend)."""
    pytest.importorskip("numba")
    from convnn.cli import main

    out = tmp_path_factory.mktemp("nnx_runs")
    args = ["train", "--backend", "numba", "--model", "vgg11", *TINY_VGG, "--subset", "16", "--val-subset", "16",
            "--batch-size", "16", "--epochs", "1", "--out-dir", str(out), "--run-name", "vgg", "--no-progress"]
    assert main(args) == 0
    return out / "vgg"


def _zoo_logits(run_dir, x_nchw):
    """The zoo model's evaluation logits on the jax backend, from the run's best checkpoint."""
    from convnn.models import create_model
    from convnn.models.train import load_checkpoint, restore_tree

    ckpt = load_checkpoint(run_dir / "checkpoints" / "best.safetensors")
    cfg = ckpt.meta["model"]
    be = jax_backend()
    model = create_model(cfg["name"], backend=be, num_classes=cfg["num_classes"], **cfg["options"])
    params = restore_tree(ckpt.groups["params"], model.param_specs(), be, model.dtype, "params")
    state = restore_tree(ckpt.groups["state"], model.state_specs(), be, model.dtype, "state")
    return model.apply(params, state, x_nchw, train=False)[0], params


def test_a_trained_checkpoint_becomes_an_nnx_module_with_the_zoo_logits(vgg_run):
    module = from_checkpoint(vgg_run)
    module.eval()
    x = _normal(6, (3, 32, 32, 3))
    want, params = _zoo_logits(vgg_run, _nchw(x))
    got = module(x)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # the trained weights are what the module holds (not a fresh init): compare one ConvNN kernel
    np.testing.assert_array_equal(np.asarray(module.params["features"]["0"]["layer"]["convnn"]["weight"][...]),
                                  np.asarray(params["features"]["0"]["layer"]["convnn"]["weight"]))
    # a training call uses batch statistics and updates the BatchNorm state in place
    mean0 = np.asarray(module.state["features"]["0"]["bn"]["mean"][...])
    module.train()
    module(x)
    assert not np.allclose(np.asarray(module.state["features"]["0"]["bn"]["mean"][...]), mean0)


def test_a_checkpoint_layer_lifts_into_branching2d_with_its_trained_weights(vgg_run):
    module = from_checkpoint(vgg_run)
    layer = zoo_layer(module, "features.0.layer")
    assert isinstance(layer, Branching2d)
    p = module.zoo_trees()[0]["features"]["0"]["layer"]
    x = _normal(7, (2, 8, 8, 3))
    be = jax_backend()
    cfg = module.model.cfg
    parts = [be.convnn2d(_nchw(x), p["convnn"]["weight"], p["convnn"]["bias"], cfg),
             be.conv2d(_nchw(x), p["conv"]["weight"], p["conv"]["bias"], padding="same")]
    want = be.conv2d(jnp.concatenate(parts, axis=1), p["pointwise"]["weight"], p["pointwise"]["bias"])
    np.testing.assert_allclose(np.asarray(layer(x)), _nhwc(want), rtol=1e-5, atol=1e-5)


def test_a_zoo_vit_with_convnn_attention_as_an_nnx_module():
    module = from_zoo("vit_tiny_cifar", num_classes=10, seed=3, **TINY_VIT)
    module.eval()
    x = _normal(8, (2, 32, 32, 3))
    params, state = module.zoo_trees()
    want, _ = module.model.apply(params, state, _nchw(x), train=False)
    np.testing.assert_array_equal(np.asarray(module(x)), np.asarray(want))
    layer = zoo_layer(module, "blocks.0.attn")
    assert isinstance(layer, ConvNNAttention) and layer.num_heads == 2
    tokens = _normal(9, (2, 65, 16))
    want = jax_backend().convnn_attention(tokens, params["blocks"]["0"]["attn"], module.model.cfg, heads=2)
    np.testing.assert_array_equal(np.asarray(layer(tokens)), np.asarray(want))


# ----------------------------------------------------------------------------- errors
def test_bad_arguments_name_the_field_and_what_is_allowed():
    with pytest.raises(ValueError, match="in_features=0 must be an int >= 1"):
        ConvNN2d(0, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="either config= or the option arguments"):
        ConvNN2d(3, 4, rngs=nnx.Rngs(0), config=ConvNNConfig(k=4), select="position")
    with pytest.raises(ValueError, match="num_heads=3 must divide in_features=8"):
        ConvNNAttention(3, 8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="channels-last maps"):
        ConvNN2d(3, 4, rngs=nnx.Rngs(0))(jnp.zeros((2, 3, 5)))
    layer = ConvNN2d(3, 4, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"weight has shape \(4, 3, 9\); this layer needs \(4, 3, 4\)"):
        layer.load_zoo_params({"weight": np.zeros((4, 3, 9), np.float32), "bias": np.zeros(4, np.float32)})
    with pytest.raises(ValueError, match="rngs has no stream 'dropout'"):
        ConvNN2d(3, 4, rngs=nnx.Rngs(params=0), sampling="random", num_samples=8)


def test_a_missing_flax_names_the_extra(monkeypatch):
    for name in ("convnn.backends.jax.nnx", "convnn.backends.jax.nnx_zoo"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "flax", None)
    for name in ("convnn.backends.jax.nnx", "convnn.backends.jax.nnx_zoo"):
        with pytest.raises(ImportError, match=r"pip install 'convnn\[flax\]'"):
            importlib.import_module(name)


# ----------------------------------------------------------------------------- slow: a jax-trained run
@pytest.mark.slow
def test_a_jax_trained_checkpoint_round_trips_and_trains_on_as_an_nnx_module(tmp_path):
    from convnn.cli import main

    args = ["train", "--backend", "jax", "--model", "vgg11", *TINY_VGG, "--subset", "16", "--val-subset", "16",
            "--batch-size", "16", "--epochs", "1", "--out-dir", str(tmp_path), "--run-name", "vgg", "--no-progress"]
    assert main(args) == 0
    module = from_checkpoint(tmp_path / "vgg")
    module.eval()
    x = _normal(10, (4, 32, 32, 3))
    want, _ = _zoo_logits(tmp_path / "vgg", _nchw(x))
    np.testing.assert_array_equal(np.asarray(module(x)), np.asarray(want))
    jitted = nnx.jit(lambda m, v: m(v))(module, x)  # XLA may fuse differently from the eager ops
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(want), rtol=1e-5, atol=1e-6)
    # fine-tuning the loaded module in a user's own nnx training loop lowers its loss on a batch
    labels = jnp.arange(4) % 10
    optimizer = nnx.Optimizer(module, optax.adam(1e-2), wrt=nnx.Param)

    def loss_fn(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), labels).mean()

    @nnx.jit
    def step(m, opt):
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        opt.update(m, grads)
        return loss

    before = float(loss_fn(module))
    module.train()
    for _ in range(5):
        step(module, optimizer)
    module.eval()
    assert float(loss_fn(module)) < before
