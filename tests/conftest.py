"""Suite-wide settings that keep a run's outcome independent of luck and load.

Hypothesis draws its examples from a fixed seed per test (``derandomize``) and keeps
no example database, so a fresh clone and a warm checkout run the same examples; its
deadline and "too slow" health check measure wall time, which on a loaded machine says
nothing about the code. ``HYPOTHESIS_PROFILE=explore`` searches with fresh randomness.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("explore", deadline=None, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
