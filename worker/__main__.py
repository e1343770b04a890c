"""``python -m worker``: the RabbitMQ consumer; several may run at once."""

import sys

from worker.runner import main

sys.exit(main())
