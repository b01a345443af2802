"""`python -m export ...` = `deepseek-v4-ov export ...`."""

import sys

from deepseek_v4_ov.cli import main

sys.exit(main(["export", *sys.argv[1:]]))
