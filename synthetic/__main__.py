"""``python -m splitdet.synthetic``: see :mod:`splitdet.synthetic.cli`."""

from splitdet.synthetic.cli import main

raise SystemExit(main())
