"""The network registry: every preset is declared once, in its builder's module, as a `Preset`.

A preset names a builder (`get_symbol` of one module), the builder options it fixes, and the training-config
defaults it brings (InsightFace keys such as ``net_init`` or ``lr_schedule``). `vargface train`, `distill`, `flops`,
`export` and the config all read presets from here, so a name one command accepts, every command accepts. Adding a
network is one new builder module plus its name in ``BUILDER_MODULES``."""
import ast
import difflib
import importlib
from dataclasses import dataclass, field

from vargface.errors import VargfaceError

# Modules that declare presets (a module-level list ``PRESETS`` of `Preset`); imported on first use, since they
# import MXNet and the CLI must build its parser without it.
BUILDER_MODULES = (
    "vargface.symbols.vargfacenet",
    "vargface.symbols.fresnet",
    "vargface.symbols.fmobilefacenet",
    "vargface.symbols.pocketnet",
)


# Builder options that every command taking a network preset also accepts as options of their own, InsightFace's
# --net-multiplier and --net-num-layers and PocketNet's width and depth: config key -> (builder option, type, help).
# Any other builder option goes through --net-opt NAME=VALUE.
NETWORK_ALIASES = {
    "net_multiplier": ("multiplier", float, "width multiplier of VarGFaceNet, ResNet-IR and MobileFaceNet"),
    "net_num_layers": ("num_layers", int, "depth of a ResNet-IR (18, 34, 50, 100, ...)"),
    "net_channels": ("channels", int, "PocketNet starting width C"),
    "net_layers": ("layers", int, "PocketNet number of cells"),
}


@dataclass(frozen=True)
class Preset:
    """A named network: ``builder(preset=name, **options, **user_options)`` builds it."""

    name: str
    builder: object  # the module's get_symbol
    defaults: dict  # every option the builder takes, with its default
    options: dict = field(default_factory=dict)  # options this preset fixes over the builder's defaults
    train: dict = field(default_factory=dict)  # training-config defaults of this preset
    description: str = ""

    def resolved_options(self, **overrides):
        """The builder options this preset builds with: defaults <- preset options <- overrides."""
        return {**self.defaults, **self.options, **overrides}


_PRESETS = {}


def presets():
    """name -> Preset of every registered network, in declaration order."""
    if not _PRESETS:
        for module in BUILDER_MODULES:
            for preset in importlib.import_module(module).PRESETS:
                if preset.name in _PRESETS:
                    raise RuntimeError(f"network preset {preset.name!r} is declared twice")
                _PRESETS[preset.name] = preset
    return _PRESETS


def get_preset(name, option="--network"):
    """The preset called ``name``; an unknown name is an error listing the near and the accepted names."""
    table = presets()
    if name not in table:
        near = difflib.get_close_matches(str(name), table, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise VargfaceError(f"{option}: unknown network preset {name!r}{hint} (accepted: {', '.join(table)})")
    return table[name]


def get_symbol(name, **options):
    """Embedding Symbol of preset ``name`` (single output `fc1_output`; input `data` (N,3,S,S) RGB 0..255).

    ``options`` override the preset's; unknown names, wrong types and sizes the network cannot handle raise
    VargfaceError naming the option and the accepted values."""
    preset = get_preset(name)
    return preset.builder(preset=name, **{**preset.options, **options})


def parse_net_opts(items, option="--net-opt"):
    """['use_se=False', 'multiplier=0.25'] -> {'use_se': False, 'multiplier': 0.25} (Python literals, else str).

    A dict passes through (a config file may give ``net_opts = {...}``)."""
    if isinstance(items, dict):
        return dict(items)
    options = {}
    for item in items or []:
        name, sep, text = str(item).partition("=")
        if not sep or not name.strip():
            raise VargfaceError(f"{option} {item!r}: expected NAME=VALUE, e.g. {option} use_se=False")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()
        options[name.strip()] = value
    return options
