"""``python -m scripts <command> [--option value ...]``: every command line of the bundle (``scripts.commands``)."""

import sys

from scripts.commands import main

sys.exit(main())
