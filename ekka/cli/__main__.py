"""`python -m ekka.cli`."""

import sys

from ekka.cli import main

sys.exit(main())
