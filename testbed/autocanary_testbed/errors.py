"""The one error type of the test bed.

Kept apart from ``autocanary.errors`` on purpose: these are failures of the
test environment (a binary missing, a service that never became ready), not
errors the daemon can meet in production.
"""

from __future__ import annotations


class HarnessError(Exception):
    """A real service for tests could not be set up; the message says what to do."""
