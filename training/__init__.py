"""vitlab training: ``python training/run.py`` and the engine, schedule and reports behind it."""
