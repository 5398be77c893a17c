"""The study harness (not the library: nothing outside this package imports it).

- :mod:`~kd.experiment.cli`: a study's command line (``open_study``);
- :mod:`~kd.experiment.command`: what every command shares: errors as one line and exit 2;
- :mod:`~kd.experiment.results`: results tables (atomic rows, resume, provenance, failures),
  ``python -m kd.experiment.results merge``;
- :mod:`~kd.experiment.lock`: one writer per results table;
- :mod:`~kd.experiment.executor`: where cells run (here, or as Ray tasks);
- :mod:`~kd.experiment.cache`: trained models on disk, keyed by their spec;
- :mod:`~kd.experiment.verdict`: one verdict per claim;
- :mod:`~kd.experiment.estimate`, :mod:`~kd.experiment.bench`: time estimates and benchmarks.
"""
