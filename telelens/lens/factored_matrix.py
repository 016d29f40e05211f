"""A low-rank matrix ``A @ B`` kept as its two factors (TransformerLens's ``FactoredMatrix`` API).

Circuits such as ``W_Q @ W_K.T`` (the QK circuit) or ``W_V @ W_O`` (the OV circuit) are
``d_model x d_model`` but have rank at most ``d_head``. :class:`FactoredMatrix` stores the
factors ``A`` (``[..., ldim, mdim]``) and ``B`` (``[..., mdim, rdim]``) and computes the SVD,
eigenvalues and Frobenius norm from them, without ever forming the large product. Leading
(batch) dimensions, e.g. ``[n_layers, n_heads]``, broadcast like ``torch.matmul``.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, overload

import torch

Scalar = int | float | torch.Tensor
Index = int | slice | None | torch.Tensor | tuple[Any, ...]


def _check(condition: bool, message: str) -> None:
    """Raise ``AssertionError`` (what TransformerLens raises) unless ``condition``; survives ``python -O``."""
    if not condition:
        raise AssertionError(message)


def _mT(x: torch.Tensor) -> torch.Tensor:
    """Swap the last two dimensions."""
    return x.transpose(-2, -1)


def _keep_dim(index: Any) -> Any:
    """Turn an integer index into a length-1 slice, so indexing keeps that dimension."""
    if isinstance(index, int):
        return slice(index, index + 1 if index != -1 else None)
    return index


class FactoredMatrix:
    """The matrix ``A @ B``, represented by ``A`` ``[..., ldim, mdim]`` and ``B`` ``[..., mdim, rdim]``.

    The leading dimensions of ``A`` and ``B`` are broadcast against each other on
    construction (as expanded views, so no memory is copied); :attr:`shape` is
    ``leading_dims + (ldim, rdim)``.
    """

    def __init__(self, A: torch.Tensor, B: torch.Tensor) -> None:
        _check(
            A.size(-1) == B.size(-2),
            f"Factored matrix must match on inner dimension, shapes were a: {A.shape}, b: {B.shape}",
        )
        self.ldim: int = A.size(-2)
        self.mdim: int = B.size(-2)
        self.rdim: int = B.size(-1)
        self.has_leading_dims: bool = A.ndim > 2 or B.ndim > 2
        try:
            leading = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        except RuntimeError as e:
            raise RuntimeError(
                f"Shape mismatch: cannot broadcast leading dimensions of A {A.shape} and B {B.shape}. {e}"
            ) from e
        self.shape: torch.Size = torch.Size((*leading, self.ldim, self.rdim))
        self.A: torch.Tensor = A.broadcast_to((*leading, self.ldim, self.mdim))
        self.B: torch.Tensor = B.broadcast_to((*leading, self.mdim, self.rdim))

    # ------------------------------------------------------------------ products

    @overload
    def __matmul__(self, other: FactoredMatrix) -> FactoredMatrix: ...

    @overload
    def __matmul__(self, other: torch.Tensor) -> FactoredMatrix | torch.Tensor: ...

    def __matmul__(self, other: FactoredMatrix | torch.Tensor) -> FactoredMatrix | torch.Tensor:
        """``self @ other``.

        A matrix ``[..., rdim, new_rdim]`` (or a FactoredMatrix) gives a FactoredMatrix; a vector
        ``[rdim]`` gives the tensor ``[..., ldim]``. The factorisation kept is the one with the
        smaller hidden dimension.
        """
        if isinstance(other, FactoredMatrix):
            result = (self @ other.A) @ other.B
            assert isinstance(result, FactoredMatrix)
            return result
        if other.ndim < 2:
            _check(
                other.size(-1) == self.rdim,
                f"Vector must match on inner dimension, shapes were self: {self.shape}, other: {other.shape}",
            )
            return (self.A @ (self.B @ other.unsqueeze(-1))).squeeze(-1)
        _check(
            other.size(-2) == self.rdim,
            f"Right matrix must match on inner dimension, shapes were self: {self.shape}, other: {other.shape}",
        )
        if self.rdim > self.mdim:
            return FactoredMatrix(self.A, self.B @ other)
        return FactoredMatrix(self.AB, other)

    @overload
    def __rmatmul__(self, other: FactoredMatrix) -> FactoredMatrix: ...

    @overload
    def __rmatmul__(self, other: torch.Tensor) -> FactoredMatrix | torch.Tensor: ...

    def __rmatmul__(self, other: FactoredMatrix | torch.Tensor) -> FactoredMatrix | torch.Tensor:
        """``other @ self``.

        A matrix ``[..., new_ldim, ldim]`` gives a FactoredMatrix; a vector ``[ldim]`` gives the
        tensor ``[..., rdim]``.
        """
        if isinstance(other, FactoredMatrix):
            result = other.A @ (other.B @ self)
            assert isinstance(result, FactoredMatrix)
            return result
        _check(
            other.size(-1) == self.ldim,
            f"Left matrix must match on inner dimension, shapes were self: {self.shape}, other: {other.shape}",
        )
        if other.ndim < 2:
            return ((other.unsqueeze(-2) @ self.A) @ self.B).squeeze(-2)
        if self.ldim > self.mdim:
            return FactoredMatrix(other @ self.A, self.B)
        return FactoredMatrix(other, self.AB)

    def __mul__(self, scalar: Scalar) -> FactoredMatrix:
        """Multiply by a scalar (a number or a one-element tensor); it is folded into ``A``."""
        if isinstance(scalar, torch.Tensor):
            _check(
                scalar.numel() == 1,
                f"Tensor must be a scalar for use with * but was of shape {scalar.shape}. "
                "For matrix multiplication, use @ instead.",
            )
        return FactoredMatrix(self.A * scalar, self.B)

    def __rmul__(self, scalar: Scalar) -> FactoredMatrix:
        """``scalar * self``; same as ``self * scalar``."""
        return self * scalar

    @property
    def AB(self) -> torch.Tensor:
        """The materialised product ``[..., ldim, rdim]``; can be large."""
        return self.A @ self.B

    @property
    def BA(self) -> torch.Tensor:
        """The reversed product ``[..., mdim, mdim]``; only defined when ``ldim == rdim``."""
        _check(self.rdim == self.ldim, f"Can only take BA if ldim == rdim, shape was {self.shape}")
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        """The transpose, ``B^T @ A^T``."""
        return FactoredMatrix(_mT(self.B), _mT(self.A))

    @property
    def pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The factors ``(A, B)``."""
        return self.A, self.B

    # ---------------------------------------------------------------- spectrum

    @cached_property
    def _svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # A = Qa Ra and B^T = Qb Rb (reduced QR), so AB = Qa (Ra Rb^T) Qb^T: only the small
        # middle matrix needs an SVD, and Qa, Qb carry its singular vectors back out.
        Qa, Ra = torch.linalg.qr(self.A)
        Qb, Rb = torch.linalg.qr(_mT(self.B))
        Um, S, Vhm = torch.linalg.svd(Ra @ _mT(Rb), full_matrices=False)
        return Qa @ Um, S, Qb @ _mT(Vhm)

    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Thin SVD ``(U, S, V)`` with ``U @ S.diag_embed() @ V.mT == AB``; computed once and cached.

        With ``k = min(ldim, mdim, rdim)``, ``U`` is ``[..., ldim, k]``, ``S`` is ``[..., k]``
        (descending) and ``V`` is ``[..., rdim, k]``. Note the third element is ``V``, not ``V^H``.
        """
        return self._svd

    @property
    def U(self) -> torch.Tensor:
        """Left singular vectors ``[..., ldim, k]``."""
        return self.svd()[0]

    @property
    def S(self) -> torch.Tensor:
        """Singular values ``[..., k]``, in descending order."""
        return self.svd()[1]

    @property
    def V(self) -> torch.Tensor:
        """Right singular vectors ``[..., rdim, k]``: ``AB == U @ S.diag_embed() @ V.mT``."""
        return self.svd()[2]

    @property
    def Vh(self) -> torch.Tensor:
        """Alias of :attr:`V`, kept for TransformerLens compatibility (which has always returned ``V``
        under this name, not its conjugate transpose)."""
        return self.svd()[2]

    @property
    def eigenvalues(self) -> torch.Tensor:
        """Eigenvalues ``[..., mdim]`` (complex) of ``AB``, computed from the small ``BA``.

        ``AB`` and ``BA`` share their non-zero eigenvalues (if ``BAv = kv`` then ``AB(Av) = k(Av)``);
        ``AB``'s remaining ``ldim - mdim`` eigenvalues are zero. Requires ``ldim == rdim``.
        """
        BA = self.BA
        if BA.dtype in (torch.float16, torch.bfloat16):
            BA = BA.float()  # eig has no 16-bit kernels
        return torch.linalg.eigvals(BA)

    def norm(self) -> torch.Tensor:
        """Frobenius norm ``[...]``: the root of the sum of squared singular values."""
        return self.S.pow(2).sum(-1).sqrt()

    def make_even(self) -> FactoredMatrix:
        """An equivalent, balanced factorisation ``(U sqrt(S), sqrt(S) V^T)``.

        Each factor carries half of each singular value, and has orthogonal columns (``A``)
        or rows (``B``).
        """
        root = self.S.sqrt()
        return FactoredMatrix(self.U * root[..., None, :], root[..., :, None] * _mT(self.V))

    def collapse_l(self) -> torch.Tensor:
        """``S V^T`` ``[..., k, rdim]``: the matrix with its left orthogonal factor ``U`` removed."""
        return self.S[..., :, None] * _mT(self.V)

    def collapse_r(self) -> torch.Tensor:
        """``U S`` ``[..., ldim, k]``: the matrix with its right orthogonal factor ``V^T`` removed."""
        return self.U * self.S[..., None, :]

    # ------------------------------------------------------------ shape & misc

    @property
    def ndim(self) -> int:
        """Number of dimensions, leading ones included."""
        return len(self.shape)

    def get_corner(self, k: int = 3) -> torch.Tensor:
        """The top-left ``k x k`` corner of ``AB`` (and first ``k`` of every leading dim)."""
        corner = self.A[..., :k, :] @ self.B[..., :, :k]
        return corner[tuple(slice(k) for _ in range(corner.ndim))]

    def unsqueeze(self, k: int) -> FactoredMatrix:
        """Insert a size-1 dimension at ``k`` in both factors.

        ``k`` indexes the factors' dimensions, so a non-negative ``k`` should address a leading dim.
        """
        return FactoredMatrix(self.A.unsqueeze(k), self.B.unsqueeze(k))

    def __getitem__(self, idx: Index) -> FactoredMatrix:
        """Index the leading dimensions (``fm[layer, head]``).

        One index beyond the leading dims selects rows (``ldim``) and a second selects columns
        (``rdim``); an integer there becomes a length-1 slice, so the result stays a matrix.
        """
        if not isinstance(idx, tuple):
            idx = (idx,)
        n_leading = self.ndim - 2
        length = sum(i is not None for i in idx)
        if length <= n_leading:
            return FactoredMatrix(self.A[idx], self.B[idx])
        if length == n_leading + 1:
            idx = (*idx[:-1], _keep_dim(idx[-1]))
            return FactoredMatrix(self.A[idx], self.B[idx[:-1]])
        if length == n_leading + 2:
            rows, cols = _keep_dim(idx[-2]), _keep_dim(idx[-1])
            return FactoredMatrix(self.A[(*idx[:-2], rows)], self.B[(*idx[:-2], slice(None), cols)])
        raise ValueError(f"{idx} is too long an index for a FactoredMatrix with shape {self.shape}")

    def to(self, *args: Any, **kwargs: Any) -> FactoredMatrix:
        """Apply ``torch.Tensor.to`` (device and/or dtype) to both factors."""
        return FactoredMatrix(self.A.to(*args, **kwargs), self.B.to(*args, **kwargs))

    def __repr__(self) -> str:
        return f"FactoredMatrix: Shape({self.shape}), Hidden Dim({self.mdim})"
