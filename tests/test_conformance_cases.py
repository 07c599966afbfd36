"""The conformance case matrix, tolerances and oracle: coverage, tie-free inputs, hand-checked ties, gradients."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from convnn.conformance.cases import level1_cases, level2_cases, level3_cases, make_inputs
from convnn.conformance.levels import oracle_self_check
from convnn.conformance.oracle import oracle_forward
from convnn.conformance.pairwise import all_pairs
from convnn.conformance.selection import selection_margin
from convnn.conformance.tolerances import SELECTION_MARGIN, TOLERANCES, compare, compare_exact, tolerance_for


def test_all_pairs_covers_every_pair_and_is_deterministic():
    factors = {"a": [0, 1, 2], "b": ["x", "y"], "c": [True, False], "d": [1, 2, 3, 4]}
    rows = all_pairs(factors, seed=3)
    assert rows == all_pairs(factors, seed=3)
    for f, g in itertools.combinations(factors, 2):
        seen = {(r[f], r[g]) for r in rows}
        assert seen == set(itertools.product(factors[f], factors[g])), (f, g)
    assert len(rows) < len(list(itertools.product(*factors.values())))


def test_case_ids_are_unique_and_stable():
    first = [c.id for c in level1_cases(("float64",), full=True)]
    again = [c.id for c in level1_cases(("float64",), full=True)]
    assert first == again
    assert len(first) == len(set(first))
    quick = {c.id for c in level1_cases(("float64",), full=False)}
    assert quick <= set(first)


def test_generated_cases_cover_every_option_of_spec_section_3():
    cases = [c for c in level1_cases(("float64",), full=False) if "generated" in c.tags]
    maps = [c for c in cases if c.op in ("convnn2d", "convnn1d")]
    expect = {
        "select": {"feature", "position", "blend"}, "metric": {"cosine", "euclidean", "dot"},
        "sampling": {"all", "random", "spatial"}, "self_first": {True, False}, "order": {"rank", "position"},
        "weighting": {"none", "softmax"}, "taps": {"full", "depthwise"}, "aggregate_coords": {True, False},
        "padding": {0, 1, 2},
    }
    for name, values in expect.items():
        assert {getattr(c.cfg, name) for c in maps} == values, name
    ops = {c.op for c in cases}
    assert ops == {"convnn2d", "convnn1d", "convnn_attention", "select_neighbors"}
    shapes = [c.shape for c in maps]
    assert any(s.get("C") == 1 for s in shapes)
    assert any(s.get("B") == 1 for s in shapes)
    assert any(s.get("H", 0) != s.get("W", 0) and s.get("H", 0) % 2 for s in shapes)  # odd, non-square
    assert any(s.get("H") == 1 and s.get("W") == 1 or s.get("L") == 1 for s in shapes)  # one token
    assert any(c.cfg.k == 1 for c in cases)
    assert {c.candidates for c in cases} >= {"none", "shared", "per_sample"}
    assert {c.heads for c in cases if c.op == "convnn_attention"} == {1, 2}


def test_some_case_selects_every_candidate():
    from convnn.conformance.selection import candidate_count

    cases = [c for c in level1_cases(("float64",), full=False) if "generated" in c.tags]
    assert any(c.cfg.k == candidate_count(c, make_inputs(c)) and c.cfg.k > 1 for c in cases)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_generated_inputs_have_no_near_ties_at_their_dtype(dtype):
    for case in level1_cases((dtype,), full=False):
        if "generated" in case.tags:
            assert selection_margin(case, make_inputs(case)) >= SELECTION_MARGIN[dtype], case.id


def test_inputs_are_reproducible_and_representable_in_the_dtype():
    case = next(c for c in level1_cases(("float32",), full=False) if c.op == "convnn2d")
    a, b = make_inputs(case), make_inputs(case)
    assert np.array_equal(a["x"], b["x"])
    assert np.array_equal(a["x"].astype(np.float32).astype(np.float64), a["x"])


def test_oracle_follows_the_hand_written_lower_index_rule():
    ties = [c for c in level1_cases(("float64",), full=False) if c.expected_indices is not None]
    assert len(ties) >= 5
    for case in ties:
        got = oracle_forward(case, make_inputs(case))["indices"][0]
        assert compare_exact(got, np.asarray(case.expected_indices)).passed, case.id


def test_tolerance_table_matches_design():
    assert TOLERANCES["float64"].rtol == 1e-9
    assert (TOLERANCES["float32"].rtol, TOLERANCES["float32"].atol_scale) == (1e-4, 1e-5)
    assert TOLERANCES["bfloat16"].rtol == 2e-2
    with pytest.raises(ValueError, match="dtype='int8'"):
        tolerance_for("int8")


def test_compare_uses_atol_relative_to_the_output_scale():
    tol = tolerance_for("float32")
    want = np.array([1000.0, 0.0])
    assert compare(want + [0.0, 5e-3], want, tol).passed  # 5e-3 <= 1e-5 * 1000
    assert not compare(want + [0.0, 2e-2], want, tol).passed
    assert not compare(want * (1 + 2e-4), want, tol).passed
    assert not compare(np.array([np.nan, 0.0]), want, tol).passed
    assert not compare(np.zeros(3), want, tol).passed  # shape mismatch
    assert not compare_exact([1, 2], [1, 3]).passed


def test_level2_and_level3_cases_exist_for_both_dtypes():
    for dtype in ("float64", "float32"):
        assert level2_cases((dtype,), full=False)
        kinds = {c.op for c in level3_cases((dtype,))}
        assert kinds == {"identity_conv3x3", "identity_conv1x1", "identity_attention_dense", "identity_attention_kvt"}


@pytest.mark.parametrize("prefix", ["grad-map-05", "grad-map-13", "grad-att-06"])
def test_torch_autograd_of_the_spec_agrees_with_finite_differences(prefix):
    pytest.importorskip("torch")
    case = next(c for c in level2_cases(("float64",), full=True) if c.id.startswith(prefix))
    result = oracle_self_check(case)
    assert result.passed, (case.id, case.describe(), result)
