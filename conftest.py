"""No test or doctest may reach the network: the hub client fails at once."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
