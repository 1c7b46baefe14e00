"""`python -m moshi.server`."""

from . import main

raise SystemExit(main())
