"""``python -m deepclust.cli``: the ``deepclust`` command."""
import sys

from . import main

sys.exit(main())
