"""l2r: tailored reasoning distillation (Wang et al., EMNLP 2023) for small open students."""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes, imported on an AVX512-BF16 CPU, tries to download a faster 4-bit kernel from the Hub and
# warns when it cannot (always, offline); it then uses its own kernel. Only that logger is quieted.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
