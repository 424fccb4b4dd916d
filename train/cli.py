"""`vargface` subcommands of vargface.train: `train`, `plot-log`, the `distill` group and `merge-fc7`."""
import difflib

from vargface import options
from vargface.train import distill_cli, partial_fc

PRESET_DEFAULTS = {"network": "vargfacenet", "dataset": "emore", "loss": "arcface"}
HELP = {
    "ctx": "devices: gpu:0,1,2,3 | cpu:0,cpu:1 | cpu",
    "kvstore": "local | device | dist_sync | dist_device_sync (dist_*: start through scripts/dist_train.sh)",
    "dataset_path": "folder with train.rec, train.idx, property and the val_targets' .bin files",
    "num_classes": "identities in the data (0: read from its property file)",
    "image_size": "network input side (records of another size are resized)",
    "val_targets": "verification sets NAME (NAME.bin in the dataset folder), comma-separated; '' for none",
    "per_batch_size": "images per device per batch",
    "lr_schedule": "step (decay by lr_factor at lr_steps) | cosine (to lr_min over lr_total_steps)",
    "lr_steps": "global batch counts at which the step schedule decays, comma-separated",
    "lr_total_steps": "cosine length in batches (0: max_steps, else end_epoch epochs)",
    "warmup_steps": "batches of linear warm-up from warmup_lr to lr",
    "max_steps": "stop after this many batches (0: run to end_epoch)",
    "clip_grad_norm": "scale the embedding network's gradients (all devices) down to this global L2 norm (0: off)",
    "net_channels": "PocketNet starting width C", "net_layers": "PocketNet number of cells",
    "net_init": "xavier_<uniform|gaussian>_<in|out|avg>_<magnitude>",
    "net_opts": "a network option NAME=VALUE, repeatable (e.g. use_se=False, multiplier=0.5)",
    "frequent": "log a speedometer line every N batches",
    "verbose": "verify and checkpoint every N batches",
    "ckpt": "0 no embedding checkpoints, 1 when verification improves, 2 every round, 3 the latest as 0001",
    "prefix": "checkpoint prefix (default MODELS_ROOT/NETWORK-LOSS-DATASET/model)",
    "pretrained": "PREFIX,EPOCH: start the embedding from this checkpoint (fresh classifier and optimizer)",
    "resume": "continue the interrupted run at --prefix exactly where it stopped",
    "trust_states": "with --resume: also load an optimizer state saved as a pickle by an older version (a pickle "
                    "can run code: only for files you made yourself)",
    "train_graph": "auto (fast on CPU, faithful elsewhere) | faithful (the network's own ops) | fast (the same "
                   "function in ops with fast CPU kernels, see docs/fast_graph.md); checkpoints always hold the "
                   "faithful graph",
    "on_nan": "stop | rollback (to the last state, learning rate x nan_lr_factor)",
    "data_cutoff": "side of a grey square pasted at random on half the images (0: off)",
    "data_color": "1: colour jitter, 2: also JPEG re-compression",
    "loss_s": "scale s of the margin losses", "loss_m1": "multiplicative angular margin",
    "loss_m2": "additive angular margin (ArcFace)", "loss_m3": "additive cosine margin (CosFace)",
}


def add_train_options(parser):
    """--network/--dataset/--loss presets plus one --KEY option for every config key (InsightFace's names;
    dashes or underscores). Shared by `vargface train` and `vargface distill`."""
    from vargface.train.config import dataset, default, loss

    parser.add_argument("--config", metavar="FILE", help="experiment config file of `key = value` lines (e.g. "
                        "configs/vargfacenet_retina.py, or a run's saved PREFIX-config.py); options given here "
                        "override it")
    parser.add_argument("--network", help="network preset (`vargface flops --list` names them; default: "
                        f"{PRESET_DEFAULTS['network']})")
    parser.add_argument("--dataset", help=f"dataset preset ({', '.join(dataset)}) or a directory made by "
                        f"`vargface data` (default: {PRESET_DEFAULTS['dataset']})")
    parser.add_argument("--loss", help=f"loss preset: {', '.join(loss)} (default: {PRESET_DEFAULTS['loss']})")
    options.add_overwrite(parser, help="start a new run on a --prefix that already holds one (without it, or "
                                       "--resume, such a prefix is refused)")
    add_config_options(parser, default, HELP, suffix=", or the preset's")
    _explain_unknown(parser)


def add_config_options(parser, table, helps, suffix="", repeatable=()):
    """One --KEY option (dashes or underscores) per key of the config ``table``; ``repeatable`` keys collect every
    occurrence into a list."""
    for key, value in table.items():
        if key in PRESET_DEFAULTS:
            continue
        flags = ["--" + key.replace("_", "-")] + (["--" + key] if "_" in key else [])
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        text = helps.get(key, "")
        kwargs = dict(dest=key, default=None, metavar="VALUE", help=f"{text} (default: {shown}{suffix})")
        if isinstance(value, bool):
            kwargs.update(nargs="?", const="true")
        if isinstance(value, dict):  # net_opts: --net-opt NAME=VALUE, repeatable
            flags = ["--" + key[:-1].replace("_", "-")] + flags
            kwargs.update(action="append", metavar="NAME=VALUE")
        if key in repeatable:
            kwargs.update(action="append")
        parser.add_argument(*flags, **kwargs)


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
    """The resolved easydict config of parsed `train`/`distill` arguments: defaults (with `distill`'s own keys) <-
    presets <- the --config file <- the options given on the command line."""
    from vargface.errors import VargfaceError
    from vargface.train.config import check_key, default, distillation, generate_config, read_config_file

    with_distillation = hasattr(args, "kd")  # `vargface distill`
    table = {**default, **(distillation if with_distillation else {})}
    overrides = read_config_file(args.config) if args.config else {}
    for key in overrides:
        try:
            check_key(table, key)
        except VargfaceError as error:
            raise VargfaceError(f"--config {args.config}: {error}") from None
    presets = {k: getattr(args, k) or overrides.pop(k, None) or PRESET_DEFAULTS[k] for k in PRESET_DEFAULTS}
    for key in table:
        if key not in PRESET_DEFAULTS and getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    return generate_config(presets["network"], presets["dataset"], presets["loss"],
                           with_distillation=with_distillation, **overrides)


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
    options.add_out(q, "output image, e.g. curves.png")
    options.add_overwrite(q)
    q.set_defaults(func=_plot)
    distill_cli.register(subparsers)
    partial_fc.register(subparsers)


def refuse_existing_run(config, overwrite):
    """A fresh run on a prefix that holds one (its state or a distillation chain) is refused unless ``overwrite``;
    returns True when it holds one (and ``overwrite`` allows replacing it)."""
    from vargface.errors import VargfaceError
    from vargface.pipeline import training_state_exists
    from vargface.train.trainer import resolve_prefix

    prefix = resolve_prefix(config)
    if config.resume or not training_state_exists(prefix):
        return False
    if not overwrite:
        raise VargfaceError(f"--prefix {prefix} already holds a run; pass --resume to continue it or --overwrite "
                            f"to start a new one there")
    return True


def _train(args):
    from vargface.train.trainer import fit

    config = config_from_args(args)
    refuse_existing_run(config, args.overwrite)
    result = fit(config)
    if result["interrupted"]:
        print(f"vargface train: stopped at update {result['num_update']}; continue with the same options and "
              f"--resume")
        return 128 + int(result["interrupted"])  # the shell's code for that signal: 130 SIGINT, 143 SIGTERM
    print(f"vargface train: finished at update {result['num_update']}; last checkpoint "
          f"{result['prefix']},{result['epoch']}" + (f"; best {result['best_checkpoint']}"
                                                    if result["best_checkpoint"] else ""))
    return 0


def _plot(args):
    from vargface.train.plot_log import plot_log

    options.refuse_existing(args.out, args.overwrite)
    print(f"plot-log: wrote {plot_log(args.log, args.out)}")
    return 0
