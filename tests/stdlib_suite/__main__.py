import sys

from tests.stdlib_suite.driver import main

sys.exit(main())
