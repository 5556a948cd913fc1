"""Reports: the benchmark table and plot (certificates are written by ``evidence.certificate``)."""
