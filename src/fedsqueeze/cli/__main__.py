"""``python -m fedsqueeze.cli``: the ``fedsqueeze`` command."""

from . import main

if __name__ == "__main__":
    raise SystemExit(main())
