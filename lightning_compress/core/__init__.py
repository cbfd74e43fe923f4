"""Pure-PyTorch core: selection, schedules, patterns, criteria, quantizers, masking, surgery.

Never imports lightning (nor deepspeed at module level), so a plain PyTorch loop or another trainer
can drive the same algorithms.
"""
