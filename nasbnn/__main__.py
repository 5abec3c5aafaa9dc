"""``python -m nasbnn`` runs the command line."""

from .cli import main

raise SystemExit(main())
