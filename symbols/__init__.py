"""MXNet Symbol-API networks: VarGFaceNet (as released), ResNet-IR teachers, MobileFaceNet, PocketNet, FLOPs counter.

Importing this package stays light (the CLI imports it to register subcommands); MXNet loads on first use."""
import importlib

# preset -> (module, extra fixed keyword arguments for its get_symbol)
PRESETS = {
    "vargfacenet": ("vargface.symbols.vargfacenet", {"preset": "vargfacenet"}),
    "vargfacenet_insightface": ("vargface.symbols.vargfacenet", {"preset": "vargfacenet_insightface"}),
    "r50": ("vargface.symbols.fresnet", {"preset": "r50"}),
    "r100": ("vargface.symbols.fresnet", {"preset": "r100"}),
    "y1": ("vargface.symbols.fmobilefacenet", {"preset": "y1"}),
    "y2": ("vargface.symbols.fmobilefacenet", {"preset": "y2"}),
    "pocketnet_s128": ("vargface.symbols.pocketnet", {"preset": "pocketnet_s128"}),
    "pocketnet_s256": ("vargface.symbols.pocketnet", {"preset": "pocketnet_s256"}),
    "pocketnet_m128": ("vargface.symbols.pocketnet", {"preset": "pocketnet_m128"}),
    "pocketnet_m256": ("vargface.symbols.pocketnet", {"preset": "pocketnet_m256"}),
}


def get_symbol(preset, **options):
    """Embedding Symbol of a preset (single output `fc1_output`; input `data` (N,3,S,S) RGB 0..255).

    Options keep the original code's names and defaults; unknown names, wrong types and sizes the network
    cannot handle raise VargfaceError naming the option and the accepted values."""
    from vargface.errors import VargfaceError

    if preset not in PRESETS:
        raise VargfaceError(f"unknown network preset {preset!r}; accepted presets: {', '.join(PRESETS)}")
    module, fixed = PRESETS[preset]
    return importlib.import_module(module).get_symbol(**fixed, **options)
