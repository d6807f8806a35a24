"""Exports of a bundle for the runtimes users serve with, each written from the bundle itself."""

from pipeline.export.gguf_export import GGUF_TYPES, check_gguf, export_gguf
from pipeline.export.merged import export_merged, load_merged
from pipeline.export.record import EXPORT_RECORD, ExportError, export_digest, export_name, open_export

__all__ = ["EXPORT_RECORD", "ExportError", "GGUF_TYPES", "check_gguf", "export_digest", "export_gguf", "export_merged",
           "export_name", "load_merged", "open_export"]
