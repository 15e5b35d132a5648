import sys

from dpcdvae.cli import main

sys.exit(main())
