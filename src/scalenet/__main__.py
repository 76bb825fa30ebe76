"""``python -m scalenet``: the same CLI as the ``scalenet`` console script (and ``torchrun -m scalenet``)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
