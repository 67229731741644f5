"""Job status: the values of ``metricsmith.job_status`` in the job log, as a StrEnum.

Members compare equal to their text (``JobStatus.COMPLETED == "COMPLETED"``), so rows read
back as text and JSON payloads keep working; the database values are unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    #: some models were built, others failed
    PARTIAL = "PARTIAL"
    FAILED = "FAILED"

    @property
    def final(self) -> bool:
        return self is not JobStatus.RUNNING

    @property
    def ok(self) -> bool:
        return self is JobStatus.COMPLETED

    @property
    def failed(self) -> bool:
        """FAILED or PARTIAL: the run did not do all its work."""
        return self in (JobStatus.FAILED, JobStatus.PARTIAL)


#: the statuses a run ends with (each row gets exactly one)
FINAL_STATUSES: tuple[JobStatus, ...] = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.PARTIAL)
