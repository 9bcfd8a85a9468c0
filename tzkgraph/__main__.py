"""``python -m tzkgraph`` (also what ``torchrun -m tzkgraph`` runs)."""

import sys

from .cli import main

sys.exit(main())
