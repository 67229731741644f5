import sys

from metricsmith.cli.main import main

sys.exit(main())
