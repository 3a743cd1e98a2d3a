"""bimt.core.geometry and bimt.core.spec.Group: positions, distances, and the errors for bad shapes."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bimt import Group, PermutationSpec
from bimt.core import geometry
from conftest import ref_coords, ref_distance


def test_line_positions():
    np.testing.assert_allclose(geometry.line(4)[:, 0], [0.125, 0.375, 0.625, 0.875])
    assert geometry.line(1).shape == (1, 1) and geometry.line(1)[0, 0] == 0.5


def test_grid_is_row_major_outer_product_of_lines():
    g = geometry.grid(9)
    assert g.shape == (9, 2)
    np.testing.assert_allclose(g, ref_coords("grid", 9))
    # neuron r * cols + c sits at (x of column c, y of row r)
    r = geometry.grid((2, 3))
    np.testing.assert_allclose(r[4], [geometry.line(3)[1, 0], geometry.line(2)[1, 0]])


def test_ring_radius_and_center():
    r = geometry.ring(10)
    np.testing.assert_allclose(np.hypot(r[:, 0] - 0.5, r[:, 1] - 0.5), 0.25)
    np.testing.assert_allclose(r, ref_coords("ring", 10))


@pytest.mark.parametrize("kind", ["line", "grid", "ring"])
def test_layout_by_name(kind):
    n = 16
    np.testing.assert_allclose(geometry.layout(kind, n), ref_coords(kind, n))


def test_layout_custom_array_accepted_and_1d_promoted():
    np.testing.assert_array_equal(geometry.layout([0.0, 0.3, 1.0], 3), [[0.0], [0.3], [1.0]])
    c = np.random.default_rng(0).random((5, 3))
    np.testing.assert_array_equal(geometry.layout(c, 5), c)


@settings(max_examples=40, deadline=None)
@given(
    n_out=st.integers(1, 6),
    n_in=st.integers(1, 6),
    kind_out=st.sampled_from(["line", "grid", "ring"]),
    kind_in=st.sampled_from(["line", "grid", "ring"]),
    A=st.floats(0, 3),
    y_star=st.floats(0, 2),
    p=st.sampled_from([1.0, 2.0, 3.0]),
)
def test_pairwise_distance_matches_reference(n_out, n_in, kind_out, kind_in, A, y_star, p):
    if kind_out == "grid":
        n_out = n_out**2
    if kind_in == "grid":
        n_in = n_in**2
    out_c, in_c = ref_coords(kind_out, n_out), ref_coords(kind_in, n_in)
    d = geometry.pairwise_distance(geometry.layout(kind_out, n_out),
                                   geometry.layout(kind_in, n_in), A, y_star, p)
    assert d.shape == (n_out, n_in)
    ref = [[ref_distance(o, i, A, y_star, p) for i in in_c] for o in out_c]
    np.testing.assert_allclose(d, ref, rtol=1e-12, atol=1e-12)


def test_pairwise_distance_l1_is_paper_formula():
    a, b = geometry.line(3), geometry.line(5)
    d = geometry.pairwise_distance(a, b, A=2.0, y_star=0.5, p=1)
    np.testing.assert_allclose(d, 2.0 * np.abs(a - b.T) + 0.5)
    d2 = geometry.pairwise_distance(a, b, A=2.0, y_star=0.5, p=2)
    np.testing.assert_allclose(d2, np.sqrt((2.0 * (a - b.T)) ** 2 + 0.25))
    dinf = geometry.pairwise_distance(a, b, A=2.0, y_star=0.5, p=math.inf)
    np.testing.assert_allclose(dinf, np.maximum(2.0 * np.abs(a - b.T), 0.5))


# -- bad inputs ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 10, 99])
def test_grid_not_square_raises(n):
    with pytest.raises(ValueError, match=rf"square number of neurons, got {n}\b"):
        geometry.grid(n)
    with pytest.raises(ValueError, match=rf"got {n}\b"):
        geometry.layout("grid", n)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "4"])
def test_sizes_must_be_positive_integers(bad):
    with pytest.raises(ValueError, match=rf"positive integer, got {bad!r}"):
        geometry.line(bad)


def test_unknown_layout_name():
    with pytest.raises(ValueError, match="unknown layout 'hexagon'"):
        geometry.layout("hexagon", 4)


@pytest.mark.parametrize("shape", [(3, 1), (5, 2), (4, 2, 1), (4, 0)])
def test_layout_wrong_shape_raises(shape):
    with pytest.raises(ValueError, match=rf"layer of 4 neurons must have shape \(4, d\), got {re_tuple(shape)}"):
        geometry.layout(np.zeros(shape), 4)


def test_layout_nonfinite_raises():
    with pytest.raises(ValueError, match="finite"):
        geometry.layout([0.0, np.nan, 1.0], 3)


def test_negative_ring_radius_and_bad_norm():
    with pytest.raises(ValueError, match="radius must be >= 0, got -1"):
        geometry.ring(4, radius=-1)
    with pytest.raises(ValueError, match="p must be >= 1.*got 0.5"):
        geometry.pairwise_distance(geometry.line(2), geometry.line(2), 1, 1, p=0.5)


@pytest.mark.parametrize("coords", [np.zeros((0, 2)), np.zeros((2, 2, 2)), np.zeros((3, 0)),
                                    [[0.0], [np.inf]]])
def test_group_bad_coords_raises(coords):
    with pytest.raises(ValueError, match=r"group 'g': coords must"):
        Group("g", coords)


def test_group_heads_and_labels_checked():
    with pytest.raises(ValueError, match=r"heads=4 must .* divides its 6 neurons"):
        Group("g", geometry.line(6), heads=4)
    with pytest.raises(ValueError, match="2 labels for 3 neurons"):
        Group("g", geometry.line(3), labels=["a", "b"])
    assert Group("g", geometry.line(6), heads=3).head_size == 2


def test_spec_errors_name_the_bad_entry():
    g = {"a": Group("a", geometry.line(2)), "b": Group("b", geometry.line(3))}
    with pytest.raises(ValueError, match="names group 'c'"):
        PermutationSpec(g, {"w": ("b", "c")})
    with pytest.raises(ValueError, match="unknown charge 'l2'"):
        PermutationSpec(g, {"w": ("b", "a")}, {"w": "l2"})
    with pytest.raises(ValueError, match="'w' is charged as a weight"):
        PermutationSpec(g, {"w": ("b", None)}, {"w": "weight"})
    with pytest.raises(ValueError, match="charged tensor 'v' is missing"):
        PermutationSpec(g, {"w": ("b", "a")}, {"v": "bias"})


def re_tuple(shape):
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")
