"""``python -m crankmesh.cli``."""

import sys

from . import main

sys.exit(main())
