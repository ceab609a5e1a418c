"""What the benchmark and reproduction scripts share and the library does not need: timing
under contention, results files with provenance, README/docs sections they fill, test folders."""
