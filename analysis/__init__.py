"""analysis: representation analyses (neural codes, neuron alignment, LinearScope, interaction basis).

- :mod:`~analysis._experiments`: the offline experiment kit (data sets, small networks, training);
- :class:`LinearScope` / :class:`TransformerLinearScope`: the linear map a network applies at one input;
- neural codes and neuron alignment (convergent learning);
- the interaction basis and degeneracy diagnostics.

Every estimator follows scikit-learn's contract (see :mod:`analysis._base`). Each module lists its
public names in ``__all__``; this package re-exports them.
"""

from __future__ import annotations

from . import (
    _alignment,
    _base,
    _codes,
    _degeneracy,
    _experiments,
    _hamming,
    _interaction,
    _interaction_eval,
    _interaction_sections,
    _interaction_spectral,
    _linearscope,
)
from ._alignment import *  # noqa: F403
from ._base import *  # noqa: F403
from ._codes import *  # noqa: F403
from ._degeneracy import *  # noqa: F403
from ._experiments import *  # noqa: F403
from ._hamming import *  # noqa: F403
from ._interaction import *  # noqa: F403
from ._interaction_eval import *  # noqa: F403
from ._interaction_sections import *  # noqa: F403
from ._interaction_spectral import *  # noqa: F403
from ._linearscope import *  # noqa: F403

__all__ = [
    name
    for module in (
        _experiments,
        _base,
        _linearscope,
        _hamming,
        _codes,
        _alignment,
        _degeneracy,
        _interaction,
        _interaction_eval,
        _interaction_sections,
        _interaction_spectral,
    )
    for name in module.__all__
]
