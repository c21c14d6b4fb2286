"""What a person reads: report.md, report.json, figures, and comparisons between runs."""
