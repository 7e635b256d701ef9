"""Operating a deployed stack: the first admin, registration tokens, backups and restores (Matrix and Signal halves)."""
