"""`python -m vortex` is the `vortex` command."""

import sys

from vortex.cli.main import main

sys.exit(main())
