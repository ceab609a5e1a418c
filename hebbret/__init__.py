"""hebbret: Hebbian (FastHebb) feature learning for image retrieval."""

__version__ = "0.1.0"

from . import models  # noqa: E402,F401  (registers backbones with timm)

