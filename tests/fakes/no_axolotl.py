#!/usr/bin/env python3
"""What $TUNEBOOK_AXOLOTL names during the unit tests (tests/unit/conftest.py): a unit test that reaches Axolotl
without the stand-in fails here at once, loudly, instead of training for minutes."""
import sys

print("tests/fakes/no_axolotl.py: a unit test tried to run Axolotl (`axolotl " + " ".join(sys.argv[1:]) + "`). "
      "Unit tests train nothing: use the `standin` fixture (tests/fakes/axolotl_standin.py), or move the test to "
      "tests/e2e (or mark it `@pytest.mark.e2e`).", file=sys.stderr)
sys.exit(97)
