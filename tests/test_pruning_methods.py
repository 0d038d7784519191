"""Known answers for magnitude, Wanda (both accumulations) and SparseGPT, against hand computation
and an independent float64 numpy re-derivation of SparseGPT (explicit OBS inverse downdates, no
Cholesky)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from helpers import SPARSEGPT, sparsegpt  # tests/ is on sys.path

from srclib.pruning.magnitude import MagnitudePruner, magnitude_mask
from srclib.pruning.masks import select_mask
from srclib.pruning.sparsegpt import SparseGPTPruner, sparsegpt_prune
from srclib.pruning.wanda import WandaPruner, wanda_score

T, F = True, False
W4 = torch.tensor([[0.1, -0.9, 0.04, -0.3],
                   [0.8, 0.2, -0.7, 0.05],
                   [-0.6, 0.35, 0.15, 1.0],
                   [0.25, -0.5, 0.45, -0.12]])


def _linear(w: torch.Tensor) -> torch.nn.Linear:
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    return lin


# ---- magnitude ---------------------------------------------------------------------------------
def test_magnitude_known_answer_matrix_threshold():
    # the 8 smallest |W| of the whole matrix: .04 .05 .1 .12 .15 .2 .25 .3
    expect = torch.tensor([[T, F, T, T], [F, T, F, T], [F, F, T, F], [T, F, F, T]])
    assert torch.equal(magnitude_mask(W4, 0.5), expect)
    lin = _linear(W4)
    mask = MagnitudePruner(lin, "l").prune(0.5)
    assert torch.equal(mask, expect)
    assert torch.equal(lin.weight.detach(), torch.where(expect, torch.zeros(()), W4))


def test_magnitude_known_answer_two_four():
    expect = torch.tensor([[T, F, T, F], [F, T, F, T], [F, T, T, F], [T, F, F, T]])
    assert torch.equal(magnitude_mask(W4, 0.5, "2:4"), expect)


# ---- Wanda -------------------------------------------------------------------------------------
X4 = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 3.0, 0.0, 4.0]])  # column norms 1, 3, 2, 4


def test_wanda_known_answer():
    # |W| * [1, 3, 2, 4]:
    # row0 [.1 2.7 .08 1.2] row1 [.8 .6 1.4 .2] row2 [.6 1.05 .3 4] row3 [.25 1.5 .9 .48]
    expect = torch.tensor([[T, F, T, F], [F, T, F, T], [T, F, T, F], [T, F, F, T]])
    score = wanda_score(W4, torch.tensor([1.0, 3.0, 2.0, 4.0]))
    assert torch.allclose(score[2], torch.tensor([0.6, 1.05, 0.3, 4.0]))
    for acc in ("total", "per_pass"):  # one pass: both accumulations agree
        lin = _linear(W4)
        p = WandaPruner(lin, "l", accumulation=acc)
        p.add_batch(X4)
        assert torch.allclose(p.col_norm(), torch.tensor([1.0, 3.0, 2.0, 4.0]))
        assert torch.equal(p.prune(0.5), expect)
        assert (lin.weight[expect] == 0).all() and torch.equal(lin.weight[~expect], W4[~expect])


def test_wanda_accumulations_known_answer():
    a = torch.tensor([[3.0, 1.0], [4.0, 1.0]])  # pass A (2 tokens)
    b = torch.tensor([[0.0, 2.0], [0.0, 2.0]])  # pass B
    wa, wb = torch.tensor([1.0, 0.5]), torch.tensor([1.0, 1.0])
    expected = {  # hand computed
        ("total", False): [5.0, math.sqrt(10.0)],
        ("per_pass", False): [5.0, math.sqrt(2.0) + math.sqrt(8.0)],
        ("total", True): [math.sqrt(13.0), math.sqrt(9.25)],
        ("per_pass", True): [math.sqrt(13.0), math.sqrt(1.25) + math.sqrt(8.0)],
    }
    for (acc, weighted), want in expected.items():
        lin = _linear(torch.ones(1, 2))
        # batched: one add_batch with B = 2 passes
        p = WandaPruner(lin, "l", accumulation=acc)
        p.add_batch(torch.stack([a, b]), torch.stack([wa, wb]) if weighted else None)
        # one pass at a time, 2-D inputs
        q = WandaPruner(lin, "l", accumulation=acc)
        q.add_batch(a, wa if weighted else None)
        q.add_batch(b, wb if weighted else None)
        assert torch.allclose(p.col_norm(), torch.tensor(want), rtol=1e-6), (acc, weighted)
        assert torch.allclose(q.col_norm(), torch.tensor(want), rtol=1e-6), (acc, weighted)


def test_wanda_unit_weights_bit_identical_to_no_weights():
    """Same accumulation: weights of 1 give bit-identical statistics and masks. (Across the two
    accumulations they differ in general: see test_wanda_accumulations_known_answer.)"""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(16, 32, generator=g)
    xs = [torch.randn(3, 10, 32, generator=g) for _ in range(4)]
    for acc in ("total", "per_pass"):
        p, q = WandaPruner(_linear(w), "a", accumulation=acc), WandaPruner(_linear(w), "b", accumulation=acc)
        for x in xs:
            p.add_batch(x)
            q.add_batch(x, torch.ones(x.shape[:2]))
        assert torch.equal(p.stat, q.stat)
        assert torch.equal(p.prune(0.5), q.prune(0.5))


def test_wanda_errors_name_the_layer():
    p = WandaPruner(_linear(W4), "blocks.0.q_proj")
    with pytest.raises(ValueError, match=r"blocks\.0\.q_proj.*NaN"):
        p.add_batch(torch.tensor([[1.0, float("nan"), 0.0, 0.0]]))
    with pytest.raises(ValueError, match=r"blocks\.0\.q_proj.*token_weight"):
        p.add_batch(torch.ones(1, 2, 4), torch.full((1, 2), 1.5))
    with pytest.raises(ValueError, match=r"blocks\.0\.q_proj.*\(B, T, 4\)"):
        p.add_batch(torch.ones(2, 5))
    with pytest.raises(ValueError, match="accumulation"):
        WandaPruner(_linear(W4), "x", accumulation="mean")
    with pytest.raises(RuntimeError, match="blocks.0.q_proj"):
        p.prune(0.5)


# ---- SparseGPT: hand-computed ------------------------------------------------------------------
def test_sparsegpt_two_column_obs_update():
    # H^-1 = 1/3 [[2, -1], [-1, 2]]; scores w^2 / [chol(H^-1)]_jj^2 = 1 / (2/3) = 1.5 and 4 / (1/2) = 8:
    # prune column 0; OBS: w1 -= w0 * Hinv01 / Hinv00 = 2 + 0.5
    w = torch.tensor([[1.0, 2.0]])
    h = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
    new, mask = sparsegpt_prune(w, h, 0.5, blocksize=2, percdamp=0.0)
    assert torch.equal(mask, torch.tensor([[T, F]]))
    assert torch.allclose(new, torch.tensor([[0.0, 2.5]]), atol=1e-6)


def test_sparsegpt_diagonal_known_answer():
    # H = diag(1, 4, 0 -> dead, 2), percdamp 0: score = w^2 * H_jj, dead column zeroed (score 0)
    h = torch.diag(torch.tensor([1.0, 4.0, 0.0, 2.0]))
    new, mask = sparsegpt_prune(W4, h, 0.5, blocksize=4, percdamp=0.0)
    expect = torch.tensor([[T, F, T, F], [F, F, T, T], [F, F, T, F], [T, F, T, T]])
    assert torch.equal(mask, expect)
    want = torch.tensor([[0.0, -0.9, 0.0, -0.3], [0.8, 0.2, 0.0, 0.0], [-0.6, 0.35, 0.0, 1.0], [0.0, -0.5, 0.0, 0.0]])
    assert torch.equal(new, want)
    # blocksize 2: each 4 x 2 block prunes its own 4 lowest
    _, mask2 = sparsegpt_prune(W4, h, 0.5, blocksize=2, percdamp=0.0)
    assert torch.equal(mask2, torch.tensor([[T, F, T, F], [F, T, T, F], [T, F, T, F], [T, F, T, F]]))


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    rows=st.integers(1, 5),
    cols=st.sampled_from([4, 8, 12]),
    blocksize=st.sampled_from([4, 8, 128]),
    s=st.sampled_from([0.25, 0.5, 0.75]),
)
def test_sparsegpt_diagonal_hessian_is_weighted_magnitude(data, rows, cols, blocksize, s):
    """Diagonal H: the mask is the per-block lowest w^2 * H_jj, kept weights untouched (exactly)."""
    w = torch.tensor(data.draw(st.lists(st.integers(-20, 20), min_size=rows * cols, max_size=rows * cols)),
                     dtype=torch.float32).reshape(rows, cols)
    hd = torch.tensor(data.draw(st.lists(st.sampled_from([1.0, 4.0, 16.0]), min_size=cols, max_size=cols)))
    new, mask = sparsegpt_prune(w, torch.diag(hd), s, blocksize=blocksize, percdamp=0.0)
    score = w ** 2 * hd[None, :]
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        assert torch.equal(mask[:, i1:i2], select_mask(score[:, i1:i2], s, scope="matrix"))
    assert torch.equal(new[~mask], w[~mask]) and (new[mask] == 0).all()


# ---- SparseGPT: independent re-derivation ------------------------------------------------------
def _stable_lowest(score: np.ndarray, k: int) -> np.ndarray:
    m = np.zeros(score.size, dtype=bool)
    m[np.argsort(score.reshape(-1), kind="stable")[:k]] = True
    return m.reshape(score.shape)


def _obs_reference(W, H, s, blocksize, percdamp, nm=None):
    """OBS with explicit inverse downdates in float64 (Frantar & Alistarh, Alg. 1)."""
    W, H = W.astype(np.float64).copy(), H.astype(np.float64).copy()
    C = W.shape[1]
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += percdamp * np.mean(np.diag(H)) * np.eye(C)
    G = np.linalg.inv(H)
    d = np.empty(C)  # pivot of column j once columns < j are eliminated (= chol(H^-1, upper)_jj^2)
    E = G.copy()
    for j in range(C):
        d[j] = E[j, j]
        E = E - np.outer(E[:, j], E[j, :]) / E[j, j]
    mask = np.zeros(W.shape, dtype=bool)
    for i1 in range(0, C, blocksize):
        i2 = min(i1 + blocksize, C)
        if nm is None:
            sc = W[:, i1:i2] ** 2 / d[i1:i2]
            mask[:, i1:i2] = _stable_lowest(sc, math.floor(sc.size * s))
        for j in range(i1, i2):
            if nm is not None and (j - i1) % nm[1] == 0:
                sc = W[:, j:j + nm[1]] ** 2 / d[j:j + nm[1]]
                for r in range(W.shape[0]):
                    mask[r, j:j + nm[1]] = _stable_lowest(sc[r], nm[0])
            q = np.where(mask[:, j], 0.0, W[:, j])
            err = (W[:, j] - q) / G[j, j]
            W[:, j:] -= np.outer(err, G[j, j:])
            W[:, j] = q
            G = G - np.outer(G[:, j], G[j, :]) / G[j, j]
    return W, mask


@pytest.mark.parametrize("pattern,nm,s", [("unstructured", None, 0.5), ("unstructured", None, 0.3),
                                          ("2:4", (2, 4), 0.5), ("4:8", (4, 8), 0.5)])
@pytest.mark.parametrize("blocksize", [8, 16, 128])
def test_sparsegpt_matches_independent_obs(pattern, nm, s, blocksize):
    g = torch.Generator().manual_seed(3)
    rows, cols = 6, 24
    w = torch.randn(rows, cols, generator=g)
    x = torch.randn(200, cols, generator=g) @ torch.randn(cols, cols, generator=g) * 0.3
    h = 2.0 / 200 * x.T @ x
    new, mask = sparsegpt_prune(w, h, s, pattern, blocksize=blocksize, percdamp=0.01)
    ref_w, ref_mask = _obs_reference(w.numpy(), h.numpy(), s, blocksize, 0.01, nm)
    assert np.array_equal(mask.numpy(), ref_mask)
    np.testing.assert_allclose(new.numpy(), ref_w, atol=2e-4, rtol=1e-4)


def test_sparsegpt_pruner_hessian_weighted():
    """H = (2/N) sum_n X_n^T diag(w_n^2) X_n, N = passes; unit weights bit-identical to none."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 7, 8, generator=g)
    wt = torch.rand(3, 7, generator=g)
    p = SparseGPTPruner(_linear(torch.randn(4, 8, generator=g)), "l", **SPARSEGPT)
    p.add_batch(x[:2], wt[:2])
    p.add_batch(x[2], wt[2])  # (N, C) = one pass
    want = sum((x[n] * wt[n, :, None]).T.double() @ (x[n] * wt[n, :, None]).double() for n in range(3)) * 2 / 3
    assert p.n_passes == 3
    assert torch.allclose(p.hessian().double(), want, atol=1e-5)
    a = SparseGPTPruner(_linear(torch.ones(4, 8)), "a", **SPARSEGPT)
    b = SparseGPTPruner(_linear(torch.ones(4, 8)), "b", **SPARSEGPT)
    a.add_batch(x)
    b.add_batch(x, torch.ones(3, 7))
    assert torch.equal(a.hessian(), b.hessian())


def test_sparsegpt_errors():
    with pytest.raises(ValueError, match=r"layer 'blocks\.1\.ff_out'.*not positive definite"):
        sparsegpt_prune(torch.ones(2, 2), -torch.eye(2), 0.5, name="blocks.1.ff_out", **SPARSEGPT)
    with pytest.raises(ValueError, match="blocksize"):
        sparsegpt_prune(torch.ones(2, 8), torch.eye(8), 0.5, "2:4", **sparsegpt(blocksize=6))
    with pytest.raises(ValueError, match=r"2:4.*sparsity=0\.4"):
        sparsegpt_prune(torch.ones(2, 8), torch.eye(8), 0.4, "2:4", **SPARSEGPT)
    p = SparseGPTPruner(_linear(torch.ones(2, 4)), "blocks.0.v_proj", **SPARSEGPT)
    with pytest.raises(ValueError, match=r"blocks\.0\.v_proj.*NaN"):
        p.add_batch(torch.full((1, 3, 4), float("inf")))
