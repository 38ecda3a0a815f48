"""``python -m resnetkit``: the ``resnetkit`` command."""

import sys

from resnetkit.cli.main import main

sys.exit(main())
