"""One-off studies: each writes the results beside it (studies/results/); run from a checkout as
``python -m studies.NAME``. Not installed."""
