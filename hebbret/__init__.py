"""hebbret: Hebbian (FastHebb) feature learning for image retrieval.

Train backbones without labels (:func:`pretrain`), fine-tune them on few labels
(:func:`finetune`), embed images (:func:`extract_embeddings`), or run everything
(:func:`run_pipeline`). Stage modules: ``hebbret.data``, ``hebbret.hebb``, ``hebbret.models``,
``hebbret.embed``, ``hebbret.index``, ``hebbret.evaluate``.
"""

__version__ = "0.1.0"

from . import models  # noqa: E402  (registers the backbones with timm)
from .config import PretrainConfig, load_config  # noqa: E402
from .embed import extract_embeddings  # noqa: E402
from .finetune import FinetuneConfig, finetune  # noqa: E402
from .models import create_model  # noqa: E402
from .pipeline import RunConfig, run_pipeline  # noqa: E402
from .pretrain import pretrain  # noqa: E402
from .runs import load_run, save_run  # noqa: E402

__all__ = ["FinetuneConfig", "PretrainConfig", "RunConfig", "__version__", "create_model",
           "extract_embeddings", "finetune", "load_config", "load_run", "models", "pretrain",
           "run_pipeline", "save_run"]
