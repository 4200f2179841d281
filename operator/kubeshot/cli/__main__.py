import sys

from kubeshot.cli import main

sys.exit(main())
