"""The spaCy components, each module with its factory, default model config and scorer.

``xlmrxl_transformer`` (`transformer`), ``xlmrxl_ner`` (`ner`), ``xlmrxl_textcat`` (`textcat`),
``xlmrxl_qa`` (`qa`), ``xlmrxl_fill_mask`` (`fill_mask`); what they share: saving and loading
(`backbone_pipe`), labels (`labelled_pipe`) and the training step (`update`); whole pipelines
on disk: save ids, the check against mixed saves and staged saves (`saving`).
This package imports nothing on its own, so that a reader can use `qa.annotation` without
loading the components.
"""
