"""tfkd: reference toolchain for Teacher-free Knowledge Distillation (Yuan et al., CVPR 2020)."""

__version__ = "0.1.0"
