"""``python -m semseg.cli ...``, the same as ``semseg ...``."""

import sys

from semseg.cli import main

sys.exit(main())
