"""`python -m biomx` (and `torchrun ... -m biomx train ...`)."""

import sys

from biomx.cli import main

sys.exit(main())
