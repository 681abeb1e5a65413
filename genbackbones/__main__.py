"""`python -m genbackbones ...` (also what `accelerate launch -m genbackbones` and `torchrun` run)."""

from .cli import main

main()
