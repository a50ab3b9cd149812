"""Tests that load Neutron's plugins: ML2 driver ``df``, L3 plugin ``df-l3``, status, sync.

The whole package is skipped, with the reason, when the neutron extra is not installed --
except under CI=true, where the extra is installed and a missing neutron must fail loudly.
"""

import os

import pytest

if os.environ.get("CI") != "true":
    pytest.importorskip("neutron", reason="needs the neutron extra: "
                                          "pip install -e '.[neutron,neutron-test]'")
