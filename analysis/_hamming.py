"""Packed binary codes and their Hamming kernels.

Codes are stored packed, eight bits a byte (:func:`pack_codes`); Hamming distances are popcounts
of XORed 64-bit words (:func:`hamming_distances`), so a K-NN over 50,000 codes of 1,024 bits takes
seconds (:func:`hamming_neighbors`, :func:`hamming_knn`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from interp import InterpError, ShapeError, progress_bar

from ._base import check_labels

__all__ = [
    "pack_codes",
    "unpack_codes",
    "hamming_distances",
    "hamming_neighbors",
    "hamming_knn",
]


def _check_packed(codes: Any, name: str) -> np.ndarray:
    arr = codes.numpy() if isinstance(codes, Tensor) else np.asarray(codes)
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise ShapeError(
            f"{name} must be packed codes: a 2-D uint8 array (examples, bytes) from pack_codes; "
            f"got dtype {arr.dtype} and shape {arr.shape}. Pack 0/1 codes with pack_codes(bits)."
        )
    return arr


def pack_codes(bits: Any) -> np.ndarray:
    """Pack 0/1 codes eight bits a byte.

    Parameters
    ----------
    bits : array-like of shape (examples, units)
        Booleans or 0/1 numbers.

    Returns
    -------
    numpy.ndarray of uint8, shape (examples, ceil(units / 8))
        Big-endian within each byte (``numpy.packbits``); the unused bits of the last byte are 0,
        so they never count in a Hamming distance.

    Examples
    --------
    >>> pack_codes([[1, 0, 0, 0, 0, 0, 0, 1, 1]])
    array([[129, 128]], dtype=uint8)
    """
    arr = bits.detach().cpu().numpy() if isinstance(bits, Tensor) else np.asarray(bits)
    if arr.ndim != 2:
        raise ShapeError(
            f"bits must be a 2-D array (examples, units); got shape {arr.shape}. "
            "Reshape it, e.g. bits.reshape(len(bits), -1)."
        )
    if arr.dtype != np.bool_:
        if not np.isin(arr, (0, 1)).all():
            raise ShapeError("bits must hold only 0 and 1 (or booleans); threshold them first.")
        arr = arr.astype(np.bool_)
    return np.packbits(arr, axis=1)


def unpack_codes(codes: Any, n_bits: int) -> np.ndarray:
    """The 0/1 codes (uint8, shape (examples, n_bits)) back from :func:`pack_codes`.

    Examples
    --------
    >>> unpack_codes(pack_codes([[1, 0, 1]]), 3)
    array([[1, 0, 1]], dtype=uint8)
    """
    packed = _check_packed(codes, "codes")
    if not 0 <= n_bits <= 8 * packed.shape[1]:
        raise ShapeError(f"n_bits must be in 0..{8 * packed.shape[1]}; got {n_bits}.")
    return np.unpackbits(packed, axis=1, count=n_bits)


def _words(packed: np.ndarray, n_bytes: int) -> np.ndarray:
    """Packed codes as (words, examples) uint64, zero-padded to whole words (zeros XOR to 0)."""
    pad = (-n_bytes) % 8
    if pad:
        packed = np.pad(packed, ((0, 0), (0, pad)))
    return np.ascontiguousarray(np.ascontiguousarray(packed).view(np.uint64).T)


def _distance_block(q: np.ndarray, ref: np.ndarray, out: np.ndarray) -> None:
    """``out[i, j] = popcount(q[:, i] ^ ref[:, j])`` summed over words.

    Three words are summed in uint8 (at most 192) before widening to ``out``'s dtype: the adds
    into the wide accumulator are the slowest step, so they are done a third as often.
    """
    n_words = q.shape[0]
    shape = (q.shape[1], ref.shape[1])
    xor = np.empty(shape, np.uint64)
    count = np.empty(shape, np.uint8)
    part = np.empty(shape, np.uint8)
    out[...] = 0
    for start in range(0, n_words, 3):
        for j, w in enumerate(range(start, min(start + 3, n_words))):
            np.bitwise_xor(q[w][:, None], ref[w][None, :], out=xor)
            if j == 0:
                np.bitwise_count(xor, out=count)
            else:
                np.bitwise_count(xor, out=part)
                count += part
        out += count


def _chunk_rows(n_ref: int) -> int:
    # about half a million pairs per block: the uint64 scratch array (4 MB) stays in cache
    return max(1, min(1024, (1 << 19) // max(n_ref, 1)))


def hamming_distances(a: Any, b: Any | None = None, *, n_bits: int | None = None) -> np.ndarray:
    """Hamming distances between packed codes (popcount of XORed 64-bit words, chunked).

    Parameters
    ----------
    a : uint8 array of shape (n, bytes)
        Packed codes (:func:`pack_codes`).
    b : uint8 array of shape (m, bytes), optional
        Default: ``a`` itself.
    n_bits : int, optional
        The code length. Given, the distances are the *fraction* of differing bits (float64, what
        scikit-learn's ``metric="hamming"`` computes); otherwise the count of differing bits.

    Returns
    -------
    numpy.ndarray of shape (n, m)
        int64 counts, or float64 fractions when ``n_bits`` is given.

    Examples
    --------
    >>> codes = pack_codes([[1, 1, 0, 0], [1, 0, 1, 0]])
    >>> hamming_distances(codes)
    array([[0, 2],
           [2, 0]])
    >>> hamming_distances(codes, n_bits=4)[0, 1]
    np.float64(0.5)
    """
    a = _check_packed(a, "a")
    b = a if b is None else _check_packed(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ShapeError(
            f"a and b must be codes of the same length; got {a.shape[1]} and {b.shape[1]} bytes."
        )
    if n_bits is not None and not 0 < n_bits <= 8 * a.shape[1]:
        raise ShapeError(
            f"n_bits must be in 1..{8 * a.shape[1]} for codes of {a.shape[1]} bytes; got {n_bits}."
        )
    qa, rb = _words(a, a.shape[1]), _words(b, b.shape[1])
    out = np.empty((len(a), len(b)), np.int64)
    step = _chunk_rows(len(b))
    block = np.empty((step, len(b)), np.int64)
    for start in range(0, len(a), step):
        stop = min(start + step, len(a))
        _distance_block(qa[:, start:stop], rb, block[: stop - start])
        out[start:stop] = block[: stop - start]
    return out if n_bits is None else out / n_bits


def hamming_neighbors(
    reference: Any, queries: Any, k: int, *, progress: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest reference codes of every query code, in Hamming distance.

    Ties are broken by the reference index: the neighbours are the ``k`` smallest pairs
    ``(distance, reference index)``, so among equally distant codes the earlier ones come first.
    The result is exact and deterministic (no approximate search).

    Parameters
    ----------
    reference : uint8 array of shape (n, bytes)
        Packed codes to search.
    queries : uint8 array of shape (m, bytes)
        Packed codes to look up.
    k : int
        1 <= k <= n.

    Returns
    -------
    distances : int64 array of shape (m, k)
        Bit counts, ascending.
    indices : int64 array of shape (m, k)
        Row numbers into ``reference``.

    Examples
    --------
    >>> ref = pack_codes([[0, 0, 0], [1, 1, 1], [1, 0, 0]])
    >>> hamming_neighbors(ref, pack_codes([[1, 1, 0]]), k=2)
    (array([[1, 1]]), array([[1, 2]]))
    """
    ref = _check_packed(reference, "reference")
    qs = _check_packed(queries, "queries")
    if ref.shape[1] != qs.shape[1]:
        raise ShapeError(
            f"queries must be codes of the reference's length ({ref.shape[1]} bytes); "
            f"got {qs.shape[1]} bytes."
        )
    n = len(ref)
    if not isinstance(k, int | np.integer) or not 1 <= k <= n:
        raise InterpError(
            f"k must be an integer in 1..{n} (the number of reference codes); got {k}."
        )
    rw, qw = _words(ref, ref.shape[1]), _words(qs, qs.shape[1])
    wide = np.uint16 if 64 * rw.shape[0] < 2**16 else np.uint32
    step = _chunk_rows(n)
    block = np.empty((step, n), wide)
    # one integer key per pair, distance * n + index, orders by distance then index, so topk
    # breaks ties exactly; int32 keys when they fit (half the memory traffic of int64)
    key_dtype = np.int32 if (64 * rw.shape[0] + 1) * n < 2**31 else np.int64
    index = torch.arange(n, dtype=torch.from_numpy(np.zeros(0, key_dtype)).dtype)
    dist = np.empty((len(qs), k), np.int64)
    idx = np.empty((len(qs), k), np.int64)
    starts = range(0, len(qs), step)
    for start in progress_bar(starts, desc="hamming k-nn", progress=progress):
        stop = min(start + step, len(qs))
        part = block[: stop - start]
        _distance_block(qw[:, start:stop], rw, part)
        key = torch.from_numpy(part.astype(key_dtype)).mul_(n).add_(index)
        top = torch.topk(key, k, dim=1, largest=False, sorted=True).values
        dist[start:stop] = (top // n).numpy()
        idx[start:stop] = (top % n).numpy()
    return dist, idx


def _vote(neighbor_labels: np.ndarray) -> np.ndarray:
    """Majority label of each row; a tie goes to the smallest label (scipy's ``mode`` rule)."""
    from scipy.stats import mode

    return mode(neighbor_labels, axis=1, keepdims=False).mode


def hamming_knn(
    train_codes: Any,
    train_labels: Any,
    test_codes: Any,
    k: int = 9,
    *,
    progress: bool | None = None,
) -> np.ndarray:
    """K-nearest-neighbour labels of packed codes in Hamming distance (uniform weights).

    The neighbours are those of :func:`hamming_neighbors` (distance ties broken by training
    index); the predicted label is the most common among them, a tie going to the smallest label.
    scikit-learn's ``KNeighborsClassifier(metric="hamming")`` computes the same distances but may
    break distance ties differently.

    Parameters
    ----------
    train_codes : uint8 array of shape (n, bytes)
    train_labels : integer array of shape (n,)
    test_codes : uint8 array of shape (m, bytes)
    k : int
        Number of neighbours (the paper uses 9).

    Returns
    -------
    numpy.ndarray of shape (m,)
        Predicted labels.

    Examples
    --------
    >>> train = pack_codes([[0, 0, 0, 0], [0, 0, 0, 1], [1, 1, 1, 1], [1, 1, 1, 0]])
    >>> hamming_knn(train, [0, 0, 1, 1], pack_codes([[0, 0, 1, 0], [1, 1, 0, 1]]), k=3)
    array([0, 1])
    """
    labels = check_labels(
        train_labels, len(_check_packed(train_codes, "train_codes")), "train_labels"
    )
    _, idx = hamming_neighbors(train_codes, test_codes, k, progress=progress)
    return _vote(labels.numpy()[idx])
