"""``python -m imgembed.cli``: the ``imgembed`` command."""

import sys

from imgembed.cli import main

sys.exit(main())
