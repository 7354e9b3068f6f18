"""Where ``Pix2Pix`` lived before the ``models/`` layer; kept so that imports (and configs naming
``pix2pix_lit.module.Pix2Pix``) written against it keep working."""

from pix2pix_lit.checkpoints import collect_rng_states, set_rng_states  # noqa: F401 - re-exported
from pix2pix_lit.models.base import ImageTranslationModel, count_parameters  # noqa: F401
from pix2pix_lit.models.pix2pix import Pix2Pix  # noqa: F401
from pix2pix_lit.modes import HIGHER_IS_BETTER, INFERENCE_MODES, higher_is_better  # noqa: F401
from pix2pix_lit.nets.image_pool import ImagePool  # noqa: F401
from pix2pix_lit.optim import LR_POLICIES, linear_decay  # noqa: F401

RUNTIME_OPTIONS = ImageTranslationModel.runtime_options  # the shared ones (each model class adds its own)
