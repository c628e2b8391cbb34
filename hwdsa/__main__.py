"""`python -m hwdsa` runs the CLI."""

import sys

from hwdsa.cli import main

sys.exit(main())
