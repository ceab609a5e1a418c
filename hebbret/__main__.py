"""`python -m hebbret` (and `torchrun ... -m hebbret`): the command line."""

import sys

from .cli import main

sys.exit(main())
