"""`python -m haexec ...` is the `haexec` command."""

import sys

from haexec.cli import main

sys.exit(main())
