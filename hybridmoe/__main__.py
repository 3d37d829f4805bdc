"""``python -m hybridmoe``: the ``hybridmoe`` command."""

from hybridmoe.cli import main

raise SystemExit(main())
