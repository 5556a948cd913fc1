"""Loaders for bundled data and user files."""

from .files import DataFileError, load_csv, load_file, load_npz

__all__ = ["DataFileError", "load_csv", "load_file", "load_npz"]
