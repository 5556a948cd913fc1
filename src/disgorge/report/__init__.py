"""Reports: the benchmark table and plot (certificates are written by ``evaluate.verify``)."""
