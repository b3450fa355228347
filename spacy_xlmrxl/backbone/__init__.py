"""The torch side of every component: where weights come from and how torch runs under thinc.

- `source`: checkpoint and tokenizer resolution, `BackboneSource` (checkpoint or preset), dtypes;
- `devices`: torch <-> thinc devices and arrays;
- `precision`: mixed precision (bf16 / fp16 autocast, the fp16 loss scaler), native-bf16 detection;
- `quantize`: int8 CPU inference;
- `shim`: `TorchModuleShim`, the thinc shim that owns a torch module;
- `weights`: a torch module as an HF checkpoint directory (and as bytes), LoRA adapters in ``lora/``;
- `adapters`: LoRA on a backbone (the ``lora`` setting applied), the base reference and the
  adapters-only backbone directory (``lora_save = "adapters"``);
- `nodes`: the one way to find, configure and install the backbones inside a thinc model;
- `settings`: `BackboneSettings`, every backbone setting with its default, registered as the
  config block ``spacy-xlmrxl.Backbone.v1`` (``spacy.registry.misc``).

`settings` registers the one spaCy function here; `spacy_xlmrxl.ml` builds the architectures on it.
"""
