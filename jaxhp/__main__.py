"""``python -m jaxhp demo|sweep|show|test``: the same as the ``jaxhp`` console script."""

import sys

from jaxhp.cli import main

sys.exit(main())
