"""`python -m deepseek_v4_ov ...` = the `deepseek-v4-ov ...` console script."""

import sys

from deepseek_v4_ov.cli import main

sys.exit(main())
