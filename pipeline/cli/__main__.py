"""`python -m pipeline.cli ...` is `recap ...`."""

import sys

from pipeline.cli import main

sys.exit(main())
