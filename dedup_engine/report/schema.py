"""The JSON report's contract: the schema it follows and the tool that wrote it, each named once.

The JSON format writes both fields and the reader (`report.read`) refuses a report whose fields
differ; docs/json-schema.md describes the schema field by field.
"""

SCHEMA = 3
#: Older schemas the reader still takes: 2 is 3 without `reference_roots`.
READABLE = (2, 3)
TOOL = "dedup-engine"
