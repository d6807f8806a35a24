"""Exports of a bundle for the runtimes users serve with, each written from the bundle itself."""

from pipeline.export.merged import EXPORT_RECORD, ExportError, export_merged, load_merged

__all__ = ["EXPORT_RECORD", "ExportError", "export_merged", "load_merged"]
