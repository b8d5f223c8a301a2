"""``python -m sipha`` is the ``sipha`` command (for environments without the script)."""

from .cli import main

raise SystemExit(main())
