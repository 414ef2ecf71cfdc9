"""``python -m taidpt.cli``: the ``taidpt`` command."""
import sys

from taidpt.cli import main

sys.exit(main())
