"""``python -m service.cli``: the ``retrain`` command."""

import sys

from service.cli import main

sys.exit(main())
