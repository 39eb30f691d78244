"""Dataset ingest: an uploaded zip becomes a validated, content-addressed dataset folder.

Pillow and the standard library only. `ingest_zip` is synchronous and keeps no global
state, so the bot can run it in `asyncio.to_thread`; `storage.ingest.cli` is the CLI.
"""

from storage.ingest.buckets import bucket_for, bucket_sizes
from storage.ingest.errors import IngestError
from storage.ingest.options import IngestOptions
from storage.ingest.pipeline import IngestResult, ingest_zip
from storage.ingest.report import QAReport, render_report_text

__all__ = [
    "IngestError",
    "IngestOptions",
    "IngestResult",
    "QAReport",
    "bucket_for",
    "bucket_sizes",
    "ingest_zip",
    "render_report_text",
]
