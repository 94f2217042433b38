import sys

from writewatch._cli import main

sys.exit(main())
