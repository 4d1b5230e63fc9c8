"""`python -m pipeline.library [--update-readme]`: print the column reference of every library table,
or rewrite the README's generated copy of it."""

import sys

from pipeline.library.schema import markdown_reference, update_readme

if "--update-readme" in sys.argv:
    update_readme()
else:
    print(markdown_reference())
