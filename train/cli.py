"""`vargface` subcommands of vargface.train: `train` and `plot-log` (`distill` is in distill_cli)."""
from vargface import options


def register(subparsers):
    """Add this package's subcommands to the `vargface` parser."""
    from vargface.train.schema import TRAIN, add_options

    p = subparsers.add_parser(
        "train", allow_abbrev=False, help="train a face-recognition network with a margin-softmax loss",
        description="Train a preset network on a RecordIO face data set with an ArcFace-family loss, on one or "
                    "more devices (--ctx gpu:0,1,2,3 or cpu:0,cpu:1) and KVStore local/device/dist_sync/"
                    "dist_device_sync. Every config key can be set with --KEY VALUE (lists comma-separated); the "
                    "command line wins over --config for every key. Checkpoints, the settings that ran "
                    "(PREFIX-config.py) and a JSON-lines log go to --prefix (default "
                    "MODELS_ROOT/NETWORK-LOSS-DATASET/model); --resume continues an interrupted run exactly.")
    add_options(p, TRAIN)
    p.set_defaults(func=_train)

    q = subparsers.add_parser("plot-log", help="plot loss, accuracy, lr and verification curves of a training log",
                              description="Draw the curves of a `vargface train` JSON-lines log to an image.")
    q.add_argument("log", help="PREFIX-log.jsonl written by `vargface train`")
    options.add_out(q, "output image, e.g. curves.png")
    options.add_overwrite(q)
    q.set_defaults(func=_plot)


def _train(args):
    from vargface.train.config import config_from_args
    from vargface.train.trainer import fit

    result = fit(config_from_args(args))
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
