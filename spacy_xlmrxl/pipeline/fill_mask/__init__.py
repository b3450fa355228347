"""``xlmrxl_fill_mask``: the component (`component`), dynamic masking for training (`masking`) and
masked-word accuracy (`scoring`)."""
