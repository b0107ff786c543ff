"""What a run shows: cross-validation tables and comparisons (report), figures (plots)."""
