"""Sequence classification and regression: what a task means (`tasks`, the GLUE table as data), the
one file reader and column detector (`reader`), data per source (`data`), the model (`model`),
running it (`inference`) and the official metrics (`metrics/`)."""
