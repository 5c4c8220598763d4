"""Interoperability with other tools: export to the Hugging Face ``transformers`` layout."""

from nima.interop.huggingface import export_huggingface, export_tokenizer

__all__ = ["export_huggingface", "export_tokenizer"]
