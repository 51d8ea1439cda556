"""``python -m nsfwlab`` runs the command line, like the ``nsfwlab`` script."""

from .cli import main

if __name__ == "__main__":
    main()
