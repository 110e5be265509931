import sys

from captionbeam.launch.cli import main

sys.exit(main())
