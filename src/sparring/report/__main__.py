"""`python -m sparring.report RUN_DIR [--out FILE.html]` (the same as `sparring report`)."""

import sys

from sparring.report.cli import main

sys.exit(main())
