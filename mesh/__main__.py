"""``python -m mesh``: see ``mesh._cli``."""

import sys

from mesh._cli import main

if __name__ == "__main__":
    sys.exit(main())
