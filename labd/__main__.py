"""`python -m labd` is the `labd` command."""

from labd.frontends.cli import main

raise SystemExit(main())
