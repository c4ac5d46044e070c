"""``python -m semseg ...`` runs the ``semseg`` command line."""

import sys

from semseg.cli import main

sys.exit(main())
