"""End-to-end jobs over the real services: ``make run`` (jobs.run) and ``make bench`` (jobs.bench)."""
