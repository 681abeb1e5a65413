"""`python -m genbackbones ...` (also what `accelerate launch -m genbackbones` runs)."""

from .cli import main

main()
