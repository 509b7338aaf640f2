"""Entry point: `python -m gateway_extproc.mock --port 0 --port-file PATH ...`."""

from gateway_extproc.mock.cli import main

raise SystemExit(main())
