"""``python -m nnunet_shape.demo``: the demo's command line."""

import sys

from nnunet_shape.demo.run import main

sys.exit(main())
