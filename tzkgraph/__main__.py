"""``python -m tzkgraph`` (also what ``torchrun -m tzkgraph`` runs)."""

import sys

from tzkgraph.cli import main

sys.exit(main())
