"""hebbret: Hebbian (FastHebb) feature learning for image retrieval.

Train backbones without labels (:func:`pretrain`), load them (:func:`load_run`), build them by
name through timm (:func:`create_model`).
"""

__version__ = "0.1.0"

from . import models  # noqa: E402  (registers the backbones with timm)
from .config import PretrainConfig, load_config  # noqa: E402
from .models import create_model  # noqa: E402
from .pretrain import pretrain  # noqa: E402
from .runs import load_run, save_run  # noqa: E402

__all__ = ["PretrainConfig", "__version__", "create_model", "load_config", "load_run", "models",
           "pretrain", "save_run"]
