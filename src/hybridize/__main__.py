"""`python -m hybridize ...` is the `hybridize` command (for machines where the package is on PYTHONPATH but its
console script is not installed)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
