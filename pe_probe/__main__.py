"""``python -m pe_probe`` is the same as the ``pe-probe`` command."""

import sys

from .cli import main

sys.exit(main())
