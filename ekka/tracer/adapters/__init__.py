"""One adapter module per framework; each imports its framework lazily and exposes `run(spec)`."""
