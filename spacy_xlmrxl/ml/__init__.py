"""Thinc architectures (``spacy.registry.architectures``) and what they compute on.

- `transformer`: ``spacy-xlmrxl.Transformer.v2`` (and v1), a Doc batch through the backbone in windows;
- `token_vectors`, `listener`: token vectors from an own or a shared (listened-to) backbone;
- `heads`: the NER and textcat heads on those vectors / ``<s>`` states;
- `task_models`: the QA and masked-LM models that own a whole `modeling` head model;
- `windows`, `alignment`, `encoding`, `doc_data`: the window planner, piece <-> token alignment
  and pooling, tokenisation of docs, and the per-doc output (``doc._.xlmrxl``).
"""
