"""`python -m ecoserve.cli` is the `ecoserve` command."""

from ecoserve.cli.main import main

raise SystemExit(main())
