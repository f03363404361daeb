"""
QutEmail's trial tests.

One deterministic hypothesis profile is registered and loaded here (deadline
off, derandomized, C{too_slow} suppressed); set C{QUTEMAIL_HYPOTHESIS_PROFILE}
to C{long} for a longer, randomised run.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
    max_examples=60,
)
settings.register_profile(
    "long",
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow],
    max_examples=2000,
)
settings.load_profile(os.environ.get("QUTEMAIL_HYPOTHESIS_PROFILE", "ci"))
