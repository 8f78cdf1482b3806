"""l2r: tailored reasoning distillation (Wang et al., EMNLP 2023) for small open students."""

__version__ = "0.1.0"
