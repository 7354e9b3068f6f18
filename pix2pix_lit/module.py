"""Where ``Pix2Pix`` lived before the ``models/`` layer; kept so that imports (and configs naming
``pix2pix_lit.module.Pix2Pix``) written against it keep working."""

from pix2pix_lit.models.base import (  # noqa: F401 - re-exported
    HIGHER_IS_BETTER,
    INFERENCE_MODES,
    LR_POLICIES,
    RUNTIME_OPTIONS,
    ImagePool,
    collect_rng_states,
    count_parameters,
    higher_is_better,
    linear_decay,
    set_rng_states,
)
from pix2pix_lit.models.pix2pix import Pix2Pix  # noqa: F401
