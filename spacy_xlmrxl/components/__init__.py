"""The spaCy pipeline components of spacy_xlmrxl; importing this package registers their factories.

``xlmrxl_transformer`` (shared backbone), ``xlmrxl_ner``, ``xlmrxl_textcat`` (this helper's
modules) and ``xlmrxl_qa``, ``xlmrxl_fill_mask``.
"""

from importlib.util import find_spec

from .ner import XLMRNer, make_ner
from .textcat import XLMRTextcat, make_textcat
from .transformer import XLMRTransformer, make_transformer

__all__ = ["XLMRNer", "XLMRTextcat", "XLMRTransformer", "make_ner", "make_textcat", "make_transformer"]

for _module in ("qa", "fill_mask"):
    if find_spec(f"{__name__}.{_module}") is not None:
        __import__(f"{__name__}.{_module}")
