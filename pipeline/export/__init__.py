"""Exports of a bundle for the runtimes users serve with, each written from the bundle itself."""

from pipeline.export.gguf_export import GGUF_TYPES, check_gguf, export_gguf
from pipeline.export.merged import EXPORT_RECORD, ExportError, export_merged, load_merged

__all__ = ["EXPORT_RECORD", "ExportError", "GGUF_TYPES", "check_gguf", "export_gguf", "export_merged", "load_merged"]
