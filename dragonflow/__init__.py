"""Dragonflow: a fully distributed SDN controller for OpenStack Neutron."""

import warnings

# The OVS Python IDL (used through ovsdbapp) probes for eventlet at import time and eventlet
# warns about its own deprecation; Dragonflow uses no eventlet at all.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
warnings.filterwarnings("ignore", message="Using fork\\(\\) is a bad idea")
