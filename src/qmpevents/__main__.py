"""``python -m qmpevents``: the same as the ``qmpevents`` command."""

from qmpevents.cli.main import main

raise SystemExit(main())
