"""Compressing Distill-MOS (and XLS-R-SQA) by pruning, factorisation and distillation.

One module per concern: ``nets`` (the compressible networks), ``cost`` (parameters, MACs),
``clips`` (training audio and crops), ``finetune`` (distillation after compression),
``slicing`` (physical removal of units), ``groups`` (where the prunable units are),
``importance`` (Taylor scores of units), ``structured`` and ``magnitude`` (the pruning
methods), ``checkpoint`` (the saved module and its meta) and ``device``. The command lines
are ``python -m train.prune`` and ``python -m train.lowrank``; the study that compares the
methods is ``python -m benchmarks.compression`` (docs/compression.md).
"""
