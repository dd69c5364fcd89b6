"""``python -m rung.cli``: the ``rung`` command."""

from rung.cli import main

if __name__ == "__main__":
    main()
