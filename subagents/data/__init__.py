"""The data subagent: execution records in, scrubbed and split dataset snapshots out.

Pure library code (no database: ``pilot/`` stores records and calls in here). Modules, in pipeline order:
schema (the record, parsing, content hash) -> curate (filters, injection.screen, dedup, scrub.scrub,
clusters, split) -> snapshot (immutable on-disk dataset; final_pass scans what was written). detect (the
detectors: detect-secrets, python-stdnum, phonenumbers, rules) serves scrub and final_pass alike. samples
generates demo records.
"""

from subagents.data.clusters import (
    Contamination,
    Disagreement,
    TaskItem,
    contamination,
    file_contamination,
    file_label_disagreement,
    label_disagreement,
    task_clusters,
)
from subagents.data.curate import CurationConfig, CurationResult, DropReason, Example, curate, outcome_weight
from subagents.data.errors import DataError, RecordError, ResidualSecretError, SnapshotError, SnapshotExistsError
from subagents.data.final_pass import check_payloads
from subagents.data.injection import screen
from subagents.data.samples import generate_demo_records
from subagents.data.schema import (
    ExecutionRecord,
    Feedback,
    Metrics,
    content_hash,
    parse_jsonl_line,
    parse_record,
)
from subagents.data.scrub import ScrubResult, scrub
from subagents.data.snapshot import Manifest, read_manifest, verify_snapshot, write_snapshot
from subagents.data.split import Split, assign_split, split_key

__all__ = [
    "Contamination",
    "CurationConfig",
    "CurationResult",
    "DataError",
    "Disagreement",
    "DropReason",
    "Example",
    "ExecutionRecord",
    "Feedback",
    "Manifest",
    "Metrics",
    "RecordError",
    "ResidualSecretError",
    "ScrubResult",
    "SnapshotError",
    "SnapshotExistsError",
    "Split",
    "TaskItem",
    "assign_split",
    "check_payloads",
    "contamination",
    "content_hash",
    "curate",
    "file_contamination",
    "file_label_disagreement",
    "generate_demo_records",
    "label_disagreement",
    "outcome_weight",
    "parse_jsonl_line",
    "parse_record",
    "read_manifest",
    "screen",
    "scrub",
    "split_key",
    "task_clusters",
    "verify_snapshot",
    "write_snapshot",
]
