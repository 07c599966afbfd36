"""Zoo models as plain torch nn.Modules: stable state_dict names, logits equal to the zoo's on the torch backend
(fresh and after a `convnn train` checkpoint round trip), train/eval semantics and a plain SGD fine-tuning loop."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from convnn.backends.torch.zoo_module import ZooModule, from_checkpoint, from_zoo  # noqa: E402
from convnn.models import create_model  # noqa: E402
from convnn.tree import flatten  # noqa: E402

TINY_VGG = ("vgg11", {"width": 0.125, "layer": "branching", "head": "light", "sampling": "spatial",
                      "num_samples": 16})
TINY_VIT = ("vit_tiny_cifar", {"depth": 1, "dim": 16, "mlp_dim": 32, "heads": 2, "attention": "convnn",
                               "sampling": "random", "num_samples": 16})


def _images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(seed).standard_normal((n, 3, 32, 32)), dtype=torch.float32)


def _zoo_logits(name, options, params, state, x, num_classes=10):
    zoo = create_model(name, backend="torch", num_classes=num_classes, **options)
    logits, _ = zoo.apply(params, state, x, train=False)
    return logits


@pytest.mark.parametrize("name,options", [TINY_VGG, TINY_VIT])
def test_fresh_module_names_and_logits_match_the_zoo(name, options):
    module = from_zoo(name, seed=3, **options)
    zoo = create_model(name, backend="torch", **options)
    params, state = zoo.init(3)
    sd = module.state_dict()
    assert set(sd) == set(zoo.param_specs()) | set(zoo.state_specs())
    assert {n for n, _ in module.named_parameters()} == set(zoo.param_specs())
    assert {n for n, _ in module.named_buffers()} == set(zoo.state_specs())
    for path, leaf in flatten(params).items():
        torch.testing.assert_close(sd[path], leaf, rtol=0, atol=0, msg=path)
    module.eval()
    x = _images()
    with torch.no_grad():
        got = module(x)
    torch.testing.assert_close(got, _zoo_logits(name, options, params, state, x), rtol=0, atol=0)


def test_train_mode_updates_batch_norm_buffers_and_eval_is_repeatable():
    name, options = TINY_VGG
    module = from_zoo(name, seed=1, **options)
    mean0 = module.get_buffer("features.0.bn.mean").clone()
    x = _images()
    module.eval()
    with torch.no_grad():
        a, b = module(x), module(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(module.get_buffer("features.0.bn.mean"), mean0, rtol=0, atol=0)
    module.train()
    with torch.no_grad():
        module(x)
    assert not torch.equal(module.get_buffer("features.0.bn.mean"), mean0)


def test_dropout_draws_follow_torch_manual_seed():
    name, options = TINY_VIT
    module = from_zoo(name, seed=0, **options).train()
    x = _images(2)
    torch.manual_seed(5)
    a = module(x)
    torch.manual_seed(5)
    b = module(x)
    c = module(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(b, c)  # a fresh draw (dropout, candidates) per training call


@pytest.mark.parametrize("name,options", [TINY_VGG, TINY_VIT])
def test_a_few_plain_sgd_steps_reduce_the_loss(name, options):
    torch.manual_seed(0)
    module = from_zoo(name, seed=0, **{**options, "dropout": 0.0})
    x, labels = _images(4, seed=2), torch.arange(4)
    opt = torch.optim.SGD(module.parameters(), lr=0.05)

    def eval_loss() -> float:
        module.eval()
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(module(x), labels))

    module.train()
    before = eval_loss()
    for _ in range(4):
        module.train()
        loss = torch.nn.functional.cross_entropy(module(x), labels)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in module.parameters())
        opt.step()
    assert eval_loss() < before


def test_load_state_dict_round_trip_gives_the_same_logits():
    name, options = TINY_VIT
    a, b = from_zoo(name, seed=1, **options).eval(), from_zoo(name, seed=2, **options).eval()
    x = _images()
    with torch.no_grad():
        assert not torch.equal(a(x), b(x))
        b.load_state_dict(a.state_dict())
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_checkpoint_round_trip_equals_the_zoo(tmp_path):
    from convnn.models.train import Trainer, build_config, load_checkpoint
    from convnn.models.train.loop import restore_tree

    name, options = TINY_VGG
    cfg = build_config("paper", None, {"backend": "torch", "dataset": "sample", "subset": 16, "val_subset": 8,
                                        "batch_size": 8, "epochs": 1, "lr": 1e-2, "progress": False,
                                        "out_dir": str(tmp_path), "run_name": "r", "model": name,
                                        "model_options": options})
    run = Trainer(cfg, log=lambda s: None).run().run_dir
    module = from_checkpoint(run).eval()
    ckpt = load_checkpoint(run / "checkpoints" / "best.safetensors")
    zoo = create_model(name, backend="torch", **ckpt.meta["model"]["options"])
    backend = zoo.backend
    params = restore_tree(ckpt.groups["params"], zoo.param_specs(), backend, zoo.dtype, "params")
    state = restore_tree(ckpt.groups["state"], zoo.state_specs(), backend, zoo.dtype, "state")
    init_params, _ = zoo.init(0)
    assert any(not torch.equal(flatten(params)[p], v) for p, v in flatten(init_params).items())  # it trained
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(module(x), zoo.apply(params, state, x, train=False)[0], rtol=0, atol=0)
    for path, arr in {**ckpt.groups["params"], **ckpt.groups["state"]}.items():
        np.testing.assert_array_equal(module.state_dict()[path].numpy(), arr, err_msg=path)
    last = from_checkpoint(run / "checkpoints" / "last.safetensors")
    assert isinstance(last, ZooModule) and last.zoo_config == ckpt.meta["model"]


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="which='middle'"):
        from_checkpoint(tmp_path, which="middle")
    with pytest.raises(FileNotFoundError, match="best.safetensors"):
        from_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="layer"):
        from_zoo("vgg11", layer="dense")
    with pytest.raises(TypeError, match="torch.Tensor"):
        from_zoo(TINY_VIT[0], **TINY_VIT[1])(np.zeros((1, 3, 32, 32), dtype=np.float32))
