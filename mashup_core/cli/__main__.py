"""`python -m mashup_core.cli`: how background jobs start the CLI."""

import sys

from mashup_core.cli import main

sys.exit(main())
