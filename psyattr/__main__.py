"""`python -m psyattr`: the command-line interface."""

from psyattr.cli import main

if __name__ == "__main__":
    main()
