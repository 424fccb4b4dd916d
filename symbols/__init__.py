"""MXNet Symbol-API networks: VarGFaceNet (as released), ResNet-IR teachers, MobileFaceNet; the preset registry,
named taps and the LFR2019 FLOPs counter.

Importing this package stays light (the CLI imports it to register subcommands); MXNet loads on first use."""
from vargface.symbols.registry import get_preset, get_symbol, presets  # noqa: F401
