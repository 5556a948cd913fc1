"""Loaders for bundled data and user files."""

from .files import MAX_CLASSES, MAX_FEATURE, DataFileError, load_csv, load_file, load_npz

__all__ = ["MAX_CLASSES", "MAX_FEATURE", "DataFileError", "load_csv", "load_file", "load_npz"]
