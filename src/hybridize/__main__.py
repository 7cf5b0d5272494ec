"""`python -m hybridize ...` is the `hybridize` command (for machines where the package is on PYTHONPATH but its
console script is not installed)."""

from .cli import main

if __name__ == "__main__":
    main()
