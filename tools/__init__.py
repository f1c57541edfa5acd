"""Developer tools outside the installed library (the check for a lent GPU machine)."""
