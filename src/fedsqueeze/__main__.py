"""``python -m fedsqueeze``: the ``fedsqueeze`` command (same as ``python -m fedsqueeze.cli``)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
