"""`python -m vortex` is the `vortex` command."""

import sys

from vortex.cli import main

sys.exit(main())
