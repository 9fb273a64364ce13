"""``python -m paramio``: the same command as the ``paramio`` console script."""

from .cli import main

if __name__ == "__main__":
    main()
