"""`vargface` subcommands of vargface.train: `train`, `plot-log`, and the `distill` group."""
import difflib

from vargface.train import distill_cli

PRESET_KEYS = ("network", "dataset", "loss")


def add_train_options(parser):
    """--network/--dataset/--loss presets plus one --KEY option for every config key (InsightFace's names;
    dashes or underscores). Shared by `vargface train` and `vargface distill`."""
    from vargface.train.config import dataset, default, loss, network

    parser.add_argument("--network", default="vargfacenet", help=f"network preset: {', '.join(network)}")
    parser.add_argument("--dataset", default="emore", help=f"dataset preset ({', '.join(dataset)}) or a "
                        "directory made by `vargface data` (default: %(default)s)")
    parser.add_argument("--loss", default="arcface", help=f"loss preset: {', '.join(loss)} (default: %(default)s)")
    for key, value in default.items():
        if key in PRESET_KEYS:
            continue
        flags = ["--" + key.replace("_", "-")] + (["--" + key] if "_" in key else [])
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        kwargs = dict(dest=key, default=None, metavar="VALUE", help=f"(default: {shown}, or the preset's)")
        if isinstance(value, bool):
            kwargs.update(nargs="?", const="true")
        parser.add_argument(*flags, **kwargs)
    _explain_unknown(parser)


def _explain_unknown(parser):
    """Unknown options get the near config keys in the error, not argparse's bare 'unrecognized arguments'."""
    original = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        namespace, extras = original(args, namespace)
        unknown = [a for a in extras if a.startswith("--")]
        if unknown:
            flag = unknown[0].split("=")[0]
            options = [o for o in parser._option_string_actions if o.startswith("--") and "_" not in o]
            near = difflib.get_close_matches(flag, options, n=4, cutoff=0.6)
            parser.error(f"unknown option {flag} (not a config key)" + (f"; did you mean {', '.join(near)}?"
                                                                         if near else ""))
        return namespace, extras

    parser.parse_known_args = parse_known_args


def config_from_args(args):
    """The resolved easydict config of parsed `train`/`distill` arguments."""
    from vargface.train.config import default, generate_config

    overrides = {k: getattr(args, k) for k in default if k not in PRESET_KEYS and getattr(args, k, None) is not None}
    return generate_config(getattr(args, "network", "vargfacenet"), getattr(args, "dataset", "emore"),
                           getattr(args, "loss", "arcface"), **overrides)


def register(subparsers):
    """Add this package's subcommands to the `vargface` parser."""
    p = subparsers.add_parser(
        "train", allow_abbrev=False, help="train a face-recognition network with a margin-softmax loss",
        description="Train a preset network on a RecordIO face data set with an ArcFace-family loss, on one or "
                    "more devices (--ctx gpu:0,1,2,3 or cpu:0,cpu:1) and KVStore local/device/dist_sync/"
                    "dist_device_sync. Every config key can be set with --KEY VALUE (lists comma-separated). "
                    "Checkpoints, the resolved config and a JSON-lines log go to --prefix (default "
                    "MODELS_ROOT/NETWORK-LOSS-DATASET/model); --resume continues an interrupted run exactly.")
    add_train_options(p)
    p.set_defaults(func=_train)

    q = subparsers.add_parser("plot-log", help="plot loss, accuracy, lr and verification curves of a training log",
                              description="Draw the curves of a `vargface train` JSON-lines log to an image.")
    q.add_argument("log", help="PREFIX-log.jsonl written by `vargface train`")
    q.add_argument("out", help="output image, e.g. curves.png")
    q.set_defaults(func=_plot)
    distill_cli.register(subparsers)


def _train(args):
    from vargface.train.trainer import fit

    result = fit(config_from_args(args))
    print(f"vargface train: finished at update {result['num_update']}; last checkpoint "
          f"{result['prefix']},{result['epoch']}" + (f"; best {result['best_checkpoint']}"
                                                    if result["best_checkpoint"] else ""))
    return 130 if result["interrupted"] else 0


def _plot(args):
    from vargface.train.plot_log import plot_log

    print(f"plot-log: wrote {plot_log(args.log, args.out)}")
    return 0
