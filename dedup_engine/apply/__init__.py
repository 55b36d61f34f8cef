"""Acting on a report: plan, check, act one operation at a time, journal, resume."""
