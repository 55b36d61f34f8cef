"""Reports: the JSON contract, the output formats, and reading a report back."""
