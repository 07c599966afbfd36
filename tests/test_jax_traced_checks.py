"""What the door checks under jax.jit, and what it cannot (README: JAX backend; pipeline.validate_host_candidates).

Concrete candidates and inputs get every check. Traced candidates (arguments of a jitted function) are
checked for shape, integer dtype and count against k at trace time; their values cannot be read, so
out-of-range, negative or repeated indices are NOT detected under jit (the output is unspecified), and
NaN/inf inputs are not refused. The documented remedy: validate on the host before jit with
convnn.pipeline.validate_host_candidates(cand, padded_token_count(...), batch).
"""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

import convnn as cc
from convnn import pipeline
from test_jax_helpers import attention_inputs, backend, conv_inputs

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

SAMPLED = cc.ConvNNConfig(k=3, sampling="random", num_samples=4)
BAD = {"out-of-range": [0, 2, 3, 99], "negative": [-1, 2, 3, 4], "repeated": [0, 1, 1, 2]}
README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _map_inputs():
    x, w, b = (jnp.asarray(a, dtype=jnp.float32) for a in conv_inputs(SAMPLED, shape=(2, 2, 3, 3), out=3))
    return x, w, b


# ----------------------------------------------------------------------------- concrete: every check
@pytest.mark.parametrize("kind", list(BAD))
def test_concrete_bad_candidates_raise(kind):
    be = backend()
    x, w, b = _map_inputs()
    cand = jnp.asarray(BAD[kind])
    match = "repeated" if kind == "repeated" else "token index"
    with pytest.raises(ValueError, match=match):
        be.convnn2d(x, w, b, SAMPLED, candidates=cand)
    token_cand = jnp.asarray([0, 1, 2, 6]) if kind == "out-of-range" else cand  # 6 tokens: 0..5
    with pytest.raises(ValueError, match=match):
        be.select_neighbors(jnp.ones((1, 6, 3)), SAMPLED, candidates=token_cand)
    n_tokens = pipeline.padded_token_count(x.shape[2:], SAMPLED.padding, SAMPLED.shuffle_scale)
    assert n_tokens == 25
    with pytest.raises(ValueError, match=match):
        pipeline.validate_host_candidates(np.asarray(BAD[kind]), n_tokens, batch=2)
    # a concrete array closed over by a jitted function is concrete too: still checked
    with pytest.raises(ValueError, match=match):
        jax.jit(lambda x: be.convnn2d(x, w, b, SAMPLED, candidates=cand))(x)


def test_concrete_nan_inputs_raise():
    be = backend()
    x, w, b = _map_inputs()
    with pytest.raises(ValueError, match="NaN or inf"):
        be.convnn2d(x.at[0, 0, 1, 1].set(jnp.nan), w, b, SAMPLED, candidates=jnp.asarray([0, 6, 7, 8]))
    xa, pa = attention_inputs(cc.attention_config(3))
    with pytest.raises(ValueError, match="NaN or inf"):
        be.convnn_attention(np.where(np.arange(4) == 1, np.nan, xa).astype(np.float32),
                            {k: v.astype(np.float32) for k, v in pa.items()}, cc.attention_config(3))


# ----------------------------------------------------------------------------- traced: what is still checked
@pytest.mark.parametrize("cand, exc, match", [
    (np.zeros((2, 2, 4), np.int32), ValueError, r"expected \[S\] or \[B, S\]"),
    (np.zeros((3, 4), np.int32), ValueError, "first dim must be the batch 2"),
    (np.zeros((0,), np.int32), ValueError, "empty"),
    (np.arange(4, dtype=np.float32), TypeError, "integer token indices"),
    (np.arange(2, dtype=np.int32), ValueError, r"k=3 needs 2 other candidates.*only 1"),
], ids=["rank", "batch", "empty", "float", "count-vs-k"])
def test_traced_candidates_keep_shape_dtype_and_count_checks(cand, exc, match):
    be = backend()
    x, w, b = _map_inputs()
    f = jax.jit(lambda c: be.convnn2d(x, w, b, SAMPLED, candidates=c))
    with pytest.raises(exc, match=match):
        f(jnp.asarray(cand))


def test_traced_unsorted_candidates_are_sorted():
    be = backend()
    x, w, b = _map_inputs()
    f = jax.jit(lambda c: be.convnn2d(x, w, b, SAMPLED, candidates=c))
    want = be.convnn2d(x, w, b, SAMPLED, candidates=jnp.asarray([0, 6, 7, 12]))
    np.testing.assert_allclose(np.asarray(f(jnp.asarray([12, 7, 0, 6]))), np.asarray(want), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- traced: what is NOT checked
@pytest.mark.parametrize("kind", list(BAD))
def test_traced_bad_candidate_values_are_not_detected_under_jit(kind):
    """Documented limitation: no error under jit (the output is unspecified); validate before jit instead."""
    be = backend()
    x, w, b = _map_inputs()
    y = jax.jit(lambda c: be.convnn2d(x, w, b, SAMPLED, candidates=c))(jnp.asarray(BAD[kind]))
    assert y.shape == x.shape[:1] + (3,) + x.shape[2:]
    idx, _ = jax.jit(lambda c: be.select_neighbors(jnp.ones((1, 6, 3)), SAMPLED, candidates=c))(jnp.asarray(BAD[kind]))
    assert idx.shape == (1, 6, 3)
    with pytest.raises(ValueError):  # the remedy the README documents
        pipeline.validate_host_candidates(np.asarray(BAD[kind]), pipeline.padded_token_count((3, 3), 1), batch=2)


def test_traced_nan_inputs_are_not_refused_under_jit():
    """Documented limitation: NaN/inf under jit is not refused (finiteness cannot be read at trace time)."""
    be = backend()
    x, w, b = _map_inputs()
    bad = x.at[0, 0, 1, 1].set(jnp.nan)
    y = jax.jit(lambda x: be.convnn2d(x, w, b, cc.ConvNNConfig(k=3)))(bad)
    assert y.shape == (2, 3, 3, 3)
    xa, pa = attention_inputs(cc.attention_config(3))
    xa = jnp.asarray(xa, dtype=jnp.float32).at[0, 1, 0].set(jnp.inf)
    pa = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in pa.items()}
    out = jax.jit(lambda x: be.convnn_attention(x, pa, cc.attention_config(3)))(xa)
    assert out.shape == xa.shape


def test_padded_token_count():
    assert pipeline.padded_token_count((4, 5), 1) == 6 * 7
    assert pipeline.padded_token_count((8, 8), 0, 2) == 16
    assert pipeline.padded_token_count((7,), 2) == 11
    assert pipeline.padded_token_count((9,)) == 9


def test_readme_and_docstring_document_the_traced_limits():
    text = README.read_text()
    section = text.split("### JAX backend", 1)[1].split("\n## ", 1)[0]
    for phrase in ("validate_host_candidates", "jax.jit", "NaN"):
        assert phrase in section, phrase
    doc = pipeline.validate_host_candidates.__doc__
    assert "jax.jit" in doc and "not detected" in doc
