"""What must outlive a process: instance files and SQL provenance (built in a later issue)."""
