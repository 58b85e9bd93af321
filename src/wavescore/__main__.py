"""``python -m wavescore ...`` is the ``wavescore`` command."""
import sys

from .cli import main

sys.exit(main())
