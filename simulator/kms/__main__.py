"""``python -m simulator.kms`` — run the local KMS endpoint."""

from simulator.kms._cli import main

raise SystemExit(main())
