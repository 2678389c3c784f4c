"""The declarative policy: model, layering, validation, srt import, compilation to a plan.

Pure: this package reads policy files and asks the filesystem what exists; it
never enforces anything.
"""
