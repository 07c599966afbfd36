"""`python -m convnn` runs the `convnn` command."""
import sys

from .cli import main

sys.exit(main())
