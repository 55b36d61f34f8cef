"""Reports of a search: the JSON contract (`schema`), one module per output format and the table
that picks a format's writer (`formats`), how paths and sizes are shown to people (`display`), and
reading a JSON report back as untrusted input (`read`).
"""
