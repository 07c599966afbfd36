"""Training on the numba backend with only numpy + numba + autograd: torch and jax are blocked from importing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("numba")
pytest.importorskip("autograd")

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class Block(importlib.abc.MetaPathFinder):
        # refuse torch and jax as if they were not installed

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "jax", "jaxlib"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    import numpy as np
    from convnn import ConvNNConfig, get_backend

    nb = get_backend("numba")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 6, 6)).astype(np.float32)
    labels = (x[:, 0].mean(axis=(1, 2)) > 0).astype(np.int64)
    params = {
        "conv": {"w": (rng.standard_normal((8, 3, 9)) * 0.2).astype(np.float32), "b": np.zeros(8, np.float32)},
        "head": {"w": (rng.standard_normal((2, 8)) * 0.2).astype(np.float32), "b": np.zeros(2, np.float32)},
    }
    cfg = ConvNNConfig(weighting="softmax")

    def loss_fn(p, x, labels):
        h = nb.relu(nb.convnn2d(x, p["conv"]["w"], p["conv"]["b"], cfg))
        logits = nb.linear(nb.adaptive_avg_pool2d(h, (1, 1)).reshape(x.shape[0], -1), p["head"]["w"], p["head"]["b"])
        return nb.cross_entropy(logits, labels)

    step = nb.value_and_grad(loss_fn)
    opt = nb.adamw(lr=0.05)
    state = opt.init(params)
    losses = []
    for _ in range(12):
        loss, grads = step(params, x, labels)
        grads, _ = nb.clip_grad_norm(grads, 1.0)
        params, state = opt.update(grads, state, params)
        losses.append(float(loss))
    frameworks = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "jax", "jaxlib"))
    print(json.dumps({"losses": losses, "frameworks": frameworks, "dtype": str(params["conv"]["w"].dtype)}))
    """
)


def test_trains_without_torch_or_jax():
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["frameworks"] == []
    assert report["dtype"] == "float32"
    losses = report["losses"]
    assert losses[-1] < 0.8 * losses[0], losses
