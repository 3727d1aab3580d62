"""`python -m haexec`, the same as the `haexec` console script."""

import sys

from haexec.cli import main

sys.exit(main())
