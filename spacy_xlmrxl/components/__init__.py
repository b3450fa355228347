"""The spaCy pipeline components of spacy_xlmrxl; importing this package registers their factories.

``xlmrxl_transformer`` (shared backbone), ``xlmrxl_ner``, ``xlmrxl_textcat``, ``xlmrxl_qa`` and
``xlmrxl_fill_mask``. With the package installed, spaCy also finds each factory through the
``spacy_factories`` entry points without this import.
"""

from .fill_mask import make_fill_mask
from .ner import XLMRNer, make_ner
from .qa import make_qa
from .textcat import XLMRTextcat, make_textcat
from .transformer import XLMRTransformer, make_transformer

__all__ = ["XLMRNer", "XLMRTextcat", "XLMRTransformer", "make_fill_mask", "make_ner", "make_qa", "make_textcat",
           "make_transformer"]
