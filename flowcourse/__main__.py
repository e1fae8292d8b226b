import sys

from flowcourse.cli import main

sys.exit(main())
