"""Interoperability with other tools: the Hugging Face ``transformers`` layout, out and in."""

from nima.interop.huggingface import export_huggingface, export_tokenizer, import_huggingface

__all__ = ["export_huggingface", "export_tokenizer", "import_huggingface"]
