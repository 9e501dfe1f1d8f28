import sys

from carseg.cli import main

sys.exit(main())
