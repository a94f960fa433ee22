"""``python -m raglign`` is the ``raglign`` command."""

import sys

from raglign.cli import main

sys.exit(main())
