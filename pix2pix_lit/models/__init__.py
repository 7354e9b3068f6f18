"""The algorithms: one file each, on the shared base class (see ``base.py``)."""

from pix2pix_lit.models.base import ImageTranslationModel
from pix2pix_lit.models.cyclegan import CycleGAN
from pix2pix_lit.models.pix2pix import Pix2Pix
from pix2pix_lit.models.segmenter import Segmenter
from pix2pix_lit.models.spade import SPADE

__all__ = ["DEFAULT_MODEL", "MODEL_BASES", "SPADE", "CycleGAN", "ImageTranslationModel", "Pix2Pix", "Segmenter",
           "resolve_model_class"]

# checkpoints from before the models/ layer name no class: they are pix2pix
DEFAULT_MODEL = "pix2pix_lit.models.Pix2Pix"
# what the CLI trains: the image-translation GANs, and the segmenter that scores their label -> photo outputs
MODEL_BASES = (ImageTranslationModel, Segmenter)


def resolve_model_class(path: str) -> type:
    """The model class of a ``class_path``: a full import path, or a class name in ``pix2pix_lit.models`` or in its
    module of that name in lower case (``CUT``: ``models/cut.py``, so a model added as one file is found by its
    name); an image-translation model or a Segmenter."""
    from pix2pix_lit.errors import ConfigError, find_class

    name = path.rpartition(".")[2]
    model_class = find_class(path, ["pix2pix_lit.models", f"pix2pix_lit.models.{name.lower()}"])
    if not (isinstance(model_class, type) and issubclass(model_class, MODEL_BASES)):
        raise ConfigError(f"model class {path!r} is not an image-translation model of pix2pix-lit; use e.g. "
                          "pix2pix_lit.models.Pix2Pix, CycleGAN, SPADE, CUT (or Segmenter, to score label -> photo models)")
    return model_class
