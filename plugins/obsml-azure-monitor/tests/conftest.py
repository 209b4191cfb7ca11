from __future__ import annotations

import os
import tempfile

from ingestion import ingestion  # noqa: F401

# Hermetic: nothing goes to Microsoft's endpoints (statsbeat, the OneSettings control plane), and
# the exporter's customer SDK stats (a global MeterProvider posting at exit) stay off.
os.environ["APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL"] = "true"
os.environ["APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED"] = "true"
os.environ["APPLICATIONINSIGHTS_SDKSTATS_DISABLED"] = "true"
# obsml's own errors are raised, not counted; remote stores spool here, not in ~/.cache.
os.environ["OBSML_STRICT"] = "true"
os.environ["OBSML_SPOOL_DIR"] = tempfile.mkdtemp(prefix="obsml-azure-monitor-test-spool-")
