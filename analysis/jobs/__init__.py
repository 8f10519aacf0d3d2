"""Analyses and compressions run in worker processes, outside the UI (README, section The app).

::

    from analysis.jobs import submit, submit_compression, status, cancel, wait, list_jobs, JobStatus
    key = submit("timm:vit_small_patch16_224.dino", "folder:/data/val", AnalysisSettings(samples=2000))
    status(key).state      # absent | queued | running | done | failed | cancelled
    cancel(key)            # a queued job leaves the queue at once; a running one stops at its next layer
    queue()                # the machine's queue: the running job, then the waiting ones in order
    key = submit_compression(CompressionRequest(model="zoo:vit-fmnist-supervised", eval_samples=2000))

A job's state lives in ``<cache root>/_jobs/<key>/`` (see :mod:`analysis.jobs.files`); one lock per key
(:mod:`analysis.jobs.lock`) makes two requests for one job run one worker, and one queue per machine
(:mod:`analysis.jobs.job_queue`) runs one job at a time, first come, first served. The worker is
``python -m analysis.jobs run-worker <key> --cache-dir <dir>`` (:mod:`analysis.jobs.worker`); what it runs
is the request's kind (:mod:`analysis.jobs.job_kinds`). The protocol's race-freedom is argued in
:mod:`analysis.jobs.lock`.
"""

from .api import (FINAL_STATES, STATES, JobStatus, cancel, list_jobs, queue, status, submit, submit_compression,
                  wait)
from .worker import JobError, run_worker

__all__ = ["FINAL_STATES", "STATES", "JobError", "JobStatus", "cancel", "list_jobs", "queue", "run_worker",
           "status", "submit", "submit_compression", "wait"]
