"""`python -m hf_trilevel ...` is the `hf-trilevel` command, for environments without the console script on PATH."""

from .cli import main

raise SystemExit(main())
