"""`python -m hfstack ...` (and `accelerate launch -m hfstack ...`) runs the CLI."""

import sys

from hfstack.cli import main

sys.exit(main())
