"""The estimator contract shared by every analysis (scikit-learn style).

Every estimator derives from :class:`sklearn.base.BaseEstimator`, so ``get_params``,
``set_params``, ``sklearn.base.clone`` and ``repr`` work. ``__init__`` only stores keyword
arguments; ``fit`` validates them, learns attributes ending in ``_`` and returns ``self``; using an
unfitted estimator raises :class:`NotFittedError`. Inputs are checked once at the public entry
point by :func:`check_matrix`, option words by :func:`interp.check_option`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from interp import InterpError, ShapeError, check_option

__all__ = [
    "NotFittedError",
    "check_fitted",
    "check_options",
    "check_matrix",
    "check_labels",
    "reset_fitted",
    "model_input",
    "explain_model_errors",
]


class NotFittedError(InterpError, AttributeError):
    """An estimator used before ``fit``."""


def check_fitted(estimator: Any, *attributes: str) -> None:
    """Raise :class:`NotFittedError` unless every attribute exists on ``estimator``.

    Examples
    --------
    >>> class Est:
    ...     pass
    >>> check_fitted(Est(), "codes_")
    Traceback (most recent call last):
    ...
    analysis._base.NotFittedError: This Est is not fitted yet: call fit(...) before using it.
    """
    if not all(hasattr(estimator, name) for name in attributes):
        raise NotFittedError(
            f"This {type(estimator).__name__} is not fitted yet: call fit(...) before using it."
        )


def reset_fitted(estimator: Any) -> None:
    """Forget everything a previous ``fit`` learned (every attribute ending in ``_``), so that a
    refit never mixes old state with new.

    Examples
    --------
    >>> class Est:
    ...     pass
    >>> est = Est()
    >>> est.codes_, est.k = 1, 9
    >>> reset_fitted(est)
    >>> hasattr(est, "codes_"), est.k
    (False, 9)
    """
    for name in [n for n in vars(estimator) if n.endswith("_") and not n.startswith("__")]:
        delattr(estimator, name)


def check_options(name: str, values: Any, words: Any) -> tuple[str, ...]:
    """A collection of option words, each checked by :func:`interp.check_option` (one word is a
    collection of one, not of its letters).

    Examples
    --------
    >>> check_options("metrics", "knn", ("knn", "logistic"))
    ('knn',)
    >>> check_options("metrics", ["knn", "logistc"], ("knn", "logistic"))
    Traceback (most recent call last):
    ...
    interp._errors.InterpError: metrics must be one of 'knn', 'logistic'; got 'logistc'. ...
    """
    items = (values,) if isinstance(values, str) else values
    if not isinstance(items, Sequence | set | frozenset):
        raise InterpError(
            f"{name} must be a list of option words; got {type(values).__name__} {values!r}."
        )
    return tuple(check_option(name, v, words) for v in items)


def check_matrix(
    x: Any,
    name: str = "X",
    *,
    ndim: int | tuple[int, ...] = 2,
    dtype: torch.dtype | None = None,
    min_rows: int = 1,
) -> Tensor:
    """``x`` (array-like) as a finite floating-point tensor of the expected rank.

    Integer and boolean inputs become float32 unless ``dtype`` says otherwise; floating inputs
    keep their precision. The error names the argument, the shape expected and the one received.

    Examples
    --------
    >>> check_matrix([[1, 2], [3, 4]]).dtype
    torch.float32
    >>> check_matrix([1.0, 2.0])
    Traceback (most recent call last):
    ...
    interp._errors.ShapeError: X must be a 2-D array (examples, features); got shape (2,). ...
    """
    if isinstance(x, Tensor):
        t = x.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as err:
            raise ShapeError(
                f"{name} must be an array of numbers; got {type(x).__name__}."
            ) from err
    ranks = (ndim,) if isinstance(ndim, int) else ndim
    if t.ndim not in ranks:
        wanted = " or ".join(f"{r}-D" for r in ranks)
        hint = " (examples, features)" if ranks == (2,) else ""
        raise ShapeError(
            f"{name} must be a {wanted} array{hint}; got shape {tuple(t.shape)}. "
            "Reshape it, e.g. x.reshape(len(x), -1)."
        )
    if t.shape[0] < min_rows:
        raise ShapeError(f"{name} needs at least {min_rows} rows; got {t.shape[0]}.")
    if dtype is not None:
        t = t.to(dtype)
    elif not t.is_floating_point():
        t = t.to(torch.float32)
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ShapeError(
            f"{name} contains {bad} NaN or infinite values; clean or impute them first."
        )
    return t


def check_labels(y: Any, n: int, name: str = "y") -> Tensor:
    """Integer class labels, one per example, as a 1-D int64 tensor."""
    t = y.detach() if isinstance(y, Tensor) else torch.as_tensor(np.asarray(y))
    if t.ndim != 1 or t.shape[0] != n:
        raise ShapeError(
            f"{name} must hold one label per example ({n}); got shape {tuple(t.shape)}."
        )
    if t.is_floating_point() and not torch.equal(t, t.round()):
        raise ShapeError(f"{name} must hold integer class labels; got non-integer values.")
    return t.long()


def model_input(model: nn.Module, x: Tensor) -> Tensor:
    """``x`` on the model's device; floating inputs in its precision, integer inputs (token ids)
    unchanged.

    Examples
    --------
    >>> model_input(nn.Linear(2, 2).double(), torch.zeros(1, 2)).dtype
    torch.float64
    >>> model_input(nn.Embedding(5, 2), torch.tensor([[1, 2]])).dtype
    torch.int64
    """
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is None:
        return x
    x = x.to(param.device)
    return x.to(param.dtype) if x.is_floating_point() else x


@contextlib.contextmanager
def explain_model_errors(model: nn.Module, x: Tensor, what: str = "x") -> Iterator[None]:
    """Turn an error raised inside the user's model into a :class:`~interp.ShapeError` that
    names the model, its precision and the input it could not run on."""
    try:
        yield
    except InterpError:
        raise
    except (RuntimeError, TypeError, ValueError, IndexError) as err:
        param = next((p for p in model.parameters() if p.is_floating_point()), None)
        kind = f"{param.dtype} parameters" if param is not None else "no parameters"
        raise ShapeError(
            f"The model ({type(model).__name__}, {kind}) could not run on {what} of shape "
            f"{tuple(x.shape)} and dtype {x.dtype}: {err}. Floating inputs are cast to the "
            "model's parameter dtype and integer inputs (token ids) are passed unchanged: pass "
            "inputs the model accepts (e.g. x.float() for integer features)."
        ) from err
