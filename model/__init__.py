"""The model: denoiser, sampler, tasks, cameras, checkpoint loading.

Importing diffusers imports torchao when it is installed (the `fp8` extra), and both greet every process
with warnings that do not concern us: torchao's prebuilt MX-FP8/CUTLASS extensions that do not load for
this Python (our FP8 path is torchao's per-row float8, on torch._scaled_mm, which needs neither), torch's
deprecation of torchao's pytree registrations, and diffusers' note about torchao-serialized checkpoints
(ours are not). They are raised to ERROR here, before any of those imports; errors still show."""

import logging

for _noisy in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)
