"""FactoredMatrix checked against the materialised product ``A @ B``."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from telelens.lens.factored_matrix import FactoredMatrix

DT = torch.float64


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, dtype=DT, generator=torch.Generator().manual_seed(seed))


def factored(lead: tuple[int, ...], ldim: int, mdim: int, rdim: int, seed: int = 0) -> FactoredMatrix:
    return FactoredMatrix(rand(*lead, ldim, mdim, seed=seed), rand(*lead, mdim, rdim, seed=seed + 1))


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def sorted_complex(x: torch.Tensor) -> torch.Tensor:
    """Sort a 1-D complex tensor by (real, imag), rounded so that noise cannot reorder ties."""
    key = sorted(range(len(x)), key=lambda i: (round(x[i].real.item(), 6), round(x[i].imag.item(), 6)))
    return x[key]


# (leading dims, ldim, mdim, rdim): square and rectangular, low-rank and full-rank, batched.
SHAPES = [
    ((), 6, 3, 6),
    ((), 4, 7, 4),
    ((), 5, 3, 8),
    ((), 8, 5, 3),
    ((2, 3), 6, 2, 6),
    ((2,), 3, 5, 7),
]


# ----------------------------------------------------------------- construction


def test_shape_and_dims_batched() -> None:
    fm = factored((2, 3), 5, 4, 6)
    assert fm.shape == torch.Size([2, 3, 5, 6])
    assert (fm.ldim, fm.mdim, fm.rdim, fm.ndim) == (5, 4, 6, 4)
    assert fm.has_leading_dims
    assert fm.pair == (fm.A, fm.B)
    assert not factored((), 5, 4, 6).has_leading_dims


def test_broadcasts_leading_dims() -> None:
    A, B = rand(3, 1, 5, 4), rand(2, 4, 6, seed=1)
    fm = FactoredMatrix(A, B)
    assert fm.shape == torch.Size([3, 2, 5, 6])
    assert fm.A.shape == (3, 2, 5, 4) and fm.B.shape == (3, 2, 4, 6)
    close(fm.AB, A @ B)
    unbatched_A = FactoredMatrix(rand(5, 4), rand(7, 4, 6, seed=1))
    assert unbatched_A.shape == torch.Size([7, 5, 6])


def test_construction_errors() -> None:
    with pytest.raises(AssertionError):
        FactoredMatrix(rand(5, 4), rand(3, 6))
    with pytest.raises(RuntimeError, match="broadcast"):
        FactoredMatrix(rand(2, 5, 4), rand(3, 4, 6))


def test_repr() -> None:
    assert repr(factored((2,), 5, 3, 6)) == "FactoredMatrix: Shape(torch.Size([2, 5, 6])), Hidden Dim(3)"


# ---------------------------------------------------------------------- products


@pytest.mark.parametrize("shape", SHAPES)
def test_AB_and_transpose(shape: tuple) -> None:
    fm = factored(*shape)
    close(fm.AB, fm.A @ fm.B)
    assert fm.AB.shape == fm.shape
    assert fm.T.shape == (*fm.shape[:-2], fm.rdim, fm.ldim)
    close(fm.T.AB, fm.AB.transpose(-2, -1))


def test_BA() -> None:
    fm = factored((2,), 6, 3, 6)
    close(fm.BA, fm.B @ fm.A)
    assert fm.BA.shape == (2, 3, 3)
    with pytest.raises(AssertionError):
        _ = factored((), 5, 3, 6).BA


@pytest.mark.parametrize("mdim", [2, 9])  # rdim > mdim keeps A; rdim <= mdim collapses to AB
def test_matmul_matrix(mdim: int) -> None:
    fm = factored((2, 3), 5, mdim, 4)
    M = rand(4, 7, seed=5)
    out = fm @ M
    assert isinstance(out, FactoredMatrix)
    assert out.shape == (2, 3, 5, 7)
    assert out.mdim == min(mdim, 4)
    close(out.AB, fm.AB @ M)
    batched_M = rand(3, 4, 7, seed=6)
    batched = fm @ batched_M
    assert isinstance(batched, FactoredMatrix)
    close(batched.AB, fm.AB @ batched_M)
    with pytest.raises(AssertionError):
        _ = fm @ rand(5, 7)


@pytest.mark.parametrize("mdim", [2, 9])
def test_rmatmul_matrix(mdim: int) -> None:
    fm = factored((2, 3), 5, mdim, 4)
    M = rand(7, 5, seed=5)
    out = M @ fm
    assert isinstance(out, FactoredMatrix)
    assert out.shape == (2, 3, 7, 4)
    assert out.mdim == min(mdim, 5)
    close(out.AB, M @ fm.AB)
    with pytest.raises(AssertionError):
        _ = rand(7, 4) @ fm


def test_matmul_vector() -> None:
    fm = factored((2, 3), 5, 2, 4)
    v, w = rand(4, seed=7), rand(5, seed=8)
    right = fm @ v
    assert isinstance(right, torch.Tensor) and right.shape == (2, 3, 5)
    close(right, fm.AB @ v)
    left = w @ fm
    assert isinstance(left, torch.Tensor) and left.shape == (2, 3, 4)
    close(left, w @ fm.AB)
    with pytest.raises(AssertionError):
        _ = fm @ rand(5)
    with pytest.raises(AssertionError):
        _ = rand(4) @ fm


def test_matmul_factored() -> None:
    f1, f2 = factored((2,), 5, 3, 6), factored((2,), 6, 2, 4, seed=3)
    out = f1 @ f2
    assert isinstance(out, FactoredMatrix)
    assert out.shape == (2, 5, 4)
    close(out.AB, f1.AB @ f2.AB)
    f0 = factored((2,), 7, 2, 5, seed=4)
    close(f1.__rmatmul__(f0).AB, f0.AB @ f1.AB)  # unreachable via `@` (f0.__matmul__ wins), but supported


@pytest.mark.parametrize("scalar", [3, -0.5, torch.tensor(2.5, dtype=DT), torch.tensor([1.5], dtype=DT)])
def test_scalar_mul(scalar: int | float | torch.Tensor) -> None:
    fm = factored((2,), 5, 3, 6)
    close((fm * scalar).AB, fm.AB * scalar)
    close((scalar * fm).AB, fm.AB * scalar)
    assert (fm * scalar).shape == fm.shape


def test_mul_rejects_non_scalar_tensor() -> None:
    with pytest.raises(AssertionError, match="scalar"):
        _ = factored((), 5, 3, 6) * rand(3)


# ---------------------------------------------------------------------- spectrum


@pytest.mark.parametrize("shape", SHAPES)
def test_svd_reconstructs(shape: tuple) -> None:
    fm = factored(*shape)
    U, S, V = fm.svd()
    k = min(fm.ldim, fm.mdim, fm.rdim)
    lead = fm.shape[:-2]
    assert U.shape == (*lead, fm.ldim, k) and S.shape == (*lead, k) and V.shape == (*lead, fm.rdim, k)
    close(U @ torch.diag_embed(S) @ V.transpose(-2, -1), fm.AB)
    eye = torch.eye(k, dtype=DT).expand(*lead, k, k)
    close(U.transpose(-2, -1) @ U, eye)
    close(V.transpose(-2, -1) @ V, eye)
    close(S, torch.linalg.svdvals(fm.AB)[..., :k])
    assert (S[..., :-1] >= S[..., 1:]).all()


def test_svd_cached_and_aliases() -> None:
    fm = factored((2,), 5, 3, 6)
    assert fm.svd() is fm.svd()
    U, S, V = fm.svd()
    assert fm.U is U and fm.S is S and fm.V is V and fm.Vh is V


@pytest.mark.parametrize("lead,ldim,mdim", [((), 6, 3), ((), 4, 7), ((2, 3), 5, 5), ((2,), 7, 2)])
def test_eigenvalues_match_AB(lead: tuple, ldim: int, mdim: int) -> None:
    fm = factored(lead, ldim, mdim, ldim)
    eig = fm.eigenvalues
    assert eig.shape == (*lead, mdim) and eig.is_complex()
    ref = torch.linalg.eigvals(fm.AB)
    # AB (ldim eigenvalues) and BA (mdim) share their non-zero ones; pad the shorter with zeros.
    n = max(ldim, mdim)
    pad = torch.zeros(*lead, n, dtype=eig.dtype)
    ours, theirs = pad.clone(), pad.clone()
    ours[..., :mdim], theirs[..., :ldim] = eig, ref
    for a, b in zip(ours.reshape(-1, n), theirs.reshape(-1, n)):
        close(sorted_complex(a), sorted_complex(b), tol=1e-8)


def test_eigenvalues_half_precision() -> None:
    fm = factored((), 6, 3, 6).to(torch.bfloat16)
    eig = fm.eigenvalues
    assert eig.dtype == torch.complex64 and eig.shape == (3,)


@pytest.mark.parametrize("shape", SHAPES)
def test_norm(shape: tuple) -> None:
    fm = factored(*shape)
    norm = fm.norm()
    assert norm.shape == fm.shape[:-2]
    close(norm, torch.linalg.norm(fm.AB, dim=(-2, -1)))


def test_make_even() -> None:
    fm = factored((2,), 6, 3, 5)
    even = fm.make_even()
    close(even.AB, fm.AB)
    S = torch.diag_embed(fm.S)
    close(even.A.transpose(-2, -1) @ even.A, S)
    close(even.B @ even.B.transpose(-2, -1), S)


def test_collapse() -> None:
    fm = factored((2,), 6, 3, 5)
    left, right = fm.collapse_l(), fm.collapse_r()
    assert left.shape == (2, 3, 5) and right.shape == (2, 6, 3)
    close(fm.U @ left, fm.AB)
    close(right @ fm.V.transpose(-2, -1), fm.AB)


# ----------------------------------------------------------- indexing and shape


def test_getitem_leading_dims() -> None:
    fm = factored((2, 3), 5, 4, 6)
    AB = fm.AB
    idxs: list[Any] = [1, -1, slice(0, 1), (1, 2), (0, slice(1, 3)), (torch.tensor([1, 0]),)]
    for idx in idxs:
        sub = fm[idx]
        assert isinstance(sub, FactoredMatrix)
        close(sub.AB, AB[idx])
    assert fm[None, 1].shape == (1, 3, 5, 6)


def test_getitem_rows_and_columns() -> None:
    fm = factored((2, 3), 5, 4, 6)
    AB = fm.AB
    close(fm[1, 2, 1:4].AB, AB[1, 2, 1:4])
    close(fm[1, 2, 3].AB, AB[1, 2, 3:4])  # an int row index keeps the dim
    close(fm[1, 2, -1].AB, AB[1, 2, -1:])
    close(fm[0, 1, 2:4, 1:5].AB, AB[0, 1, 2:4, 1:5])
    close(fm[0, 1, -1, -1].AB, AB[0, 1, -1:, -1:])
    close(fm[0, :, 2, :3].AB, AB[0, :, 2:3, :3])
    with pytest.raises(ValueError, match="too long"):
        _ = fm[0, 0, 0, 0, 0]


def test_get_corner() -> None:
    fm = factored((4, 5), 6, 3, 7)
    close(fm.get_corner(), fm.AB[:3, :3, :3, :3])
    close(fm.get_corner(2), fm.AB[:2, :2, :2, :2])
    close(factored((), 6, 3, 7).get_corner(4), factored((), 6, 3, 7).AB[:4, :4])


def test_unsqueeze() -> None:
    fm = factored((2,), 5, 3, 6)
    out = fm.unsqueeze(0)
    assert out.shape == (1, 2, 5, 6)
    close(out.AB, fm.AB.unsqueeze(0))


def test_to() -> None:
    fm = factored((2,), 5, 3, 6)
    single = fm.to(torch.float32)
    assert single.A.dtype == single.B.dtype == torch.float32
    assert single.to("cpu").A.device.type == "cpu"
    close(single.AB.double(), fm.AB, tol=1e-4)
