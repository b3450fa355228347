"""Scaling past one process: Ray inference, torchrun (DDP) training and a GPU memory planner.

Owns nothing itself; import the modules directly so that this package needs neither Ray nor an
initialised ``torch.distributed``:

- `spacy_xlmrxl.distributed.ray_inference`: any saved spaCy pipeline over a corpus with Ray Data
  actor pools (``run_pipeline_on_ray``, ``read_results``; CLI ``python -m ...ray_inference``).
- `spacy_xlmrxl.distributed.ddp`: a spaCy training loop for ``torchrun`` with all-reduced
  gradients (``train_ddp``, ``GradientSync``; CLI ``torchrun ... -m ...ddp [--strategy fsdp]``).
- `spacy_xlmrxl.distributed.fsdp`: the backbone sharded with FSDP2 ``fully_shard`` for that loop
  (``shard_backbones``, ``CallBalancer``, ``full_backbones``).
- `spacy_xlmrxl.distributed.memory_plan`: per-GPU memory of XL/XXL training, DDP vs FSDP,
  fp32 vs bf16, gradient checkpointing (``plan_memory``), LoRA (``plan_lora``) and a CPU
  process's (``plan_cpu_training``); tables: ``bench/memory_plan.py``.
"""
