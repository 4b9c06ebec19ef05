"""``python -m synthetic``: see :mod:`synthetic.cli`."""

from synthetic.cli import main

raise SystemExit(main())
