import sys

from kubeshot_capture.pod import main

sys.exit(main())
