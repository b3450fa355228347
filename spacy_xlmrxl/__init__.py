"""spaCy side of spacy-xlmrxl: components, architectures, alignment and long-document windows."""

from . import doc_data, models, models_heads, readers, scorers, scorers_qa, windows  # noqa: F401  (registrations)
from . import components  # noqa: F401  (factories)
from .backbone import BackboneError, BackboneSource
from .doc_data import XLMRDocData
from .serialize import export_ner_to_hf, export_textcat_to_hf

__all__ = ["BackboneError", "BackboneSource", "XLMRDocData", "export_ner_to_hf", "export_textcat_to_hf"]
