"""`vargface distill` subcommands: recursive distillation from a frozen teacher and the teacher-embedding cache."""
import os


def _add_teacher(parser):
    parser.add_argument("--teacher", metavar="PREFIX,EPOCH",
                        help="frozen teacher checkpoint (any MXNet embedding network with fc1_output)")


def register(subparsers):
    """Add the `distill` command group to the `vargface` parser."""
    from vargface.train.cli import add_train_options
    from vargface.train.distill_loss import KD_TYPES

    p = subparsers.add_parser(
        "distill", allow_abbrev=False, help="train a student under a frozen teacher, for one or more generations",
        description="Train a student network under a frozen teacher (margin loss + kd-weight * distillation loss); "
                    "with --generations G, generation k+1 restarts from generation k's final student with a fresh "
                    "optimizer and schedule. Checkpoints go to PREFIX-gen1, PREFIX-gen2, ...; the lineage "
                    "manifest to PREFIX-lineage.json; --resume continues an interrupted chain at the generation "
                    "and batch where it stopped. Every `vargface train` option applies to the student. "
                    "`vargface distill cache` precomputes the teacher's embeddings so that training does not run "
                    "the teacher.")
    _add_teacher(p)
    p.add_argument("--kd-type", default="angular", choices=KD_TYPES,
                   help="distillation loss: angular = |s/|s| - t/|t||^2 = 2-2cos (VarGFaceNet), cosine = 1-cos, "
                        "l2 = |s-t|^2 (default: %(default)s)")
    p.add_argument("--kd-weight", type=float, default=1.0, help="lambda in margin loss + lambda * kd loss "
                   "(default: %(default)s)")
    p.add_argument("--generations", type=int, default=1, help="number of recursive generations (default: 1)")
    p.add_argument("--init", metavar="PREFIX,EPOCH", help="initial student weights of generation 1 "
                   "(default: from scratch)")
    p.add_argument("--teacher-cache", metavar="PATH", help="teacher-embedding cache from `vargface distill cache`"
                   " ('auto': the default cache path beside train.rec); used only with mirror-only augmentation")
    add_train_options(p)
    p.set_defaults(func=_distill)

    sub = p.add_subparsers(dest="distill_command", metavar="{cache}")
    c = sub.add_parser("cache", help="precompute the teacher's embedding of every record and its mirror",
                       description="Embed every image of DATA_DIR/train.rec and its horizontal mirror with the "
                                   "teacher, once, into a sidecar file bound to the data and the teacher by "
                                   "checksums. Training with --teacher-cache reads it instead of running the "
                                   "teacher.")
    _add_teacher(c)
    c.add_argument("--data-dir", required=True, help="folder with train.rec, train.idx and property")
    c.add_argument("--image-size", type=int, help="side of the images training feeds (the --image-size of the "
                   "student; default: the size in DATA_DIR/property)")
    c.add_argument("--out", help="cache file (default: DATA_DIR/train.<teacher folder>-<teacher prefix>-<epoch>.kdcache, "
                   "which --teacher-cache auto finds)")
    c.add_argument("--batch-size", type=int, default=64, help="teacher batch size (default: %(default)s)")
    c.add_argument("--ctx", default="cpu", help="devices, e.g. gpu:0,1 or cpu (default: %(default)s)")
    existing = c.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace an existing cache file")
    existing.add_argument("--reuse", action="store_true", help="keep an existing cache file once it checks out "
                          "for this data, teacher and image size (a resumable pipeline's way to skip the work)")
    c.set_defaults(func=_cache)


def _need_teacher(args):
    from vargface.errors import VargfaceError

    if not args.teacher:
        raise VargfaceError("--teacher PREFIX,EPOCH is required")


def _cache(args):
    from vargface.context import parse_ctx
    from vargface.errors import VargfaceError
    from vargface.train.teacher import Teacher
    from vargface.train.teacher_cache import build_cache, default_cache_path

    _need_teacher(args)
    if args.batch_size < 1:
        raise VargfaceError(f"--batch-size: must be >= 1 (got {args.batch_size})")
    teacher = Teacher(args.teacher, ctx=parse_ctx(args.ctx))
    reused = args.reuse and os.path.exists(args.out or default_cache_path(args.data_dir, teacher))
    path = build_cache(teacher, args.data_dir, path=args.out, batch_size=args.batch_size, image_size=args.image_size,
                       overwrite=args.overwrite, reuse=args.reuse)
    print(f"teacher cache: {path}" + (" (existing, checked against this data and teacher: reused)" if reused
                                      else ""))
    return 0


def _distill(args):
    from vargface.train.cli import config_from_args
    from vargface.train.distill import distill

    _need_teacher(args)
    config = config_from_args(args)
    manifest = distill(config, args.teacher, kd_type=args.kd_type, kd_weight=args.kd_weight,
                       generations=args.generations, init=args.init, teacher_cache=args.teacher_cache)
    return 128 + int(manifest["interrupted"]) if manifest.get("interrupted") else 0  # the shell's code
