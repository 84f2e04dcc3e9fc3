"""Batch inference over many studies, resumable: `medsam batch --jobs JOBS -o OUT_DIR`.

Rooms: :mod:`~medsam.batch.jobs` (the job model and the jobs file/folder parsers), :mod:`~medsam.batch.runner`
(one job on a worker, through the toolkit's own entry points), :mod:`~medsam.batch.journal` (the append-only
journal and the OUT_DIR lock), :mod:`~medsam.batch.executors` (local worker processes),
:mod:`~medsam.batch.ray_executor` (Ray actors, optional extra ``medsam-toolkit[ray]``) and
:mod:`~medsam.batch.run` (the driver: skip, dispatch, retry, summary and failure report).
"""

from medsam.batch.jobs import Job, JobDefaults, JobList, ModelRef, load_jobs
from medsam.batch.runner import WorkerSettings

__all__ = ["Job", "JobDefaults", "JobList", "ModelRef", "WorkerSettings", "load_jobs"]
