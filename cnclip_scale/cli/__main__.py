"""`python -m cnclip_scale.cli COMMAND ...`: the `cnclip` command, for launchers that take a module (torchrun -m)."""

import sys

from cnclip_scale.cli import main

sys.exit(main())
