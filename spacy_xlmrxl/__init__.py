"""spaCy side of spacy-xlmrxl: components, architectures, alignment and long-document windows.

Importing the package registers every factory, architecture, scorer, reader and callback (with
the package installed, spaCy also finds each through its entry points without this import).
See README "Architecture" for what each subpackage owns.
"""

from .backbone.settings import BackboneSettings
from .backbone.source import BackboneError, BackboneSource
from .export import export_fill_mask_to_hf, export_ner_to_hf, export_qa_to_hf, export_textcat_to_hf
from .ml import heads, legacy, task_models, token_vectors, transformer, windows  # noqa: F401  (registrations)
from .ml.doc_data import XLMRDocData
from .pipeline import ner, textcat  # noqa: F401  (factories)
from .pipeline import transformer as transformer_pipe  # noqa: F401  (factory)
from .pipeline.fill_mask import component as fill_mask_component  # noqa: F401  (factory)
from .pipeline.qa import component as qa_component  # noqa: F401  (factory)
from .pipeline.saving import MixedSaveError, PipelineFileError, save_pipeline_atomically
from .training import corpus, cpu_memory  # noqa: F401  (readers, callbacks)

__all__ = ["BackboneError", "BackboneSettings", "BackboneSource", "MixedSaveError", "PipelineFileError", "XLMRDocData",
           "export_fill_mask_to_hf", "export_ner_to_hf", "export_qa_to_hf", "export_textcat_to_hf",
           "save_pipeline_atomically"]
