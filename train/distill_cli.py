"""`vargface distill` subcommands: distillation terms and stages from a frozen teacher, and the teacher-embedding
cache. The distillation settings are the keys of `vargface.train.schema` that belong to `distill`."""
import argparse
import os

from vargface import options


def register(subparsers):
    """Add the `distill` command group to the `vargface` parser."""
    from vargface.train.distill_loss import DEFAULT_TERM, FORMS
    from vargface.train.schema import BY_NAME, DISTILL, add_options

    p = subparsers.add_parser(
        "distill", allow_abbrev=False, help="train a student under a frozen teacher, for one or more generations",
        description="Train a student network under a frozen teacher: margin loss + the distillation terms (--kd, "
                    f"default {DEFAULT_TERM}, VarGFaceNet's objective), between named taps of the two networks "
                    "(the embedding and the last feature map at stride 2, 4, 8, 16); a train-time adapter maps "
                    "differing channel counts and is not saved. With --generations G, generation k+1 restarts from "
                    "generation k's final student with a fresh optimizer and schedule; with --teacher-schedule, the "
                    "teacher advances through its own training checkpoints. Checkpoints go to PREFIX-gen1, "
                    "PREFIX-gen2, ...; the lineage manifest to PREFIX-lineage.json; --resume continues an "
                    "interrupted chain at the generation and batch where it stopped. Every `vargface train` option "
                    "applies to the student. `vargface distill cache` precomputes the teacher's embeddings so that "
                    "training does not run the teacher.\n\nforms:\n" + "\n".join(
                        f"  {name:<9}{form.help}" for name, form in FORMS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, DISTILL)
    p.set_defaults(func=_distill)

    sub = p.add_subparsers(dest="distill_command", metavar="{cache}")
    c = sub.add_parser("cache", help="precompute the teacher's embedding of every record and its mirror",
                       description="Embed every image of DATASET/train.rec and its horizontal mirror with the "
                                   "teacher, once, into a sidecar file bound to the data and the teacher by "
                                   "checksums. Training with --teacher-cache reads it instead of running the "
                                   "teacher.")
    c.add_argument("--teacher", metavar="PREFIX,EPOCH", help=BY_NAME["teacher"].help)
    options.add_dataset(c)
    options.add_image_size(c, help="side of the images training feeds (the --image-size of the student; default: "
                                   "the size in DATASET/property)")
    options.add_out(c, "cache file (default: beside the teacher's checkpoint, TEACHER_PREFIX-EPOCH.<data folder "
                       "name>.kdcache, which --teacher-cache auto finds)", required=False)
    options.add_per_batch_size(c, 64)
    options.add_ctx(c)
    existing = c.add_mutually_exclusive_group()
    options.add_overwrite(existing, help="replace an existing cache file")
    existing.add_argument("--reuse", action="store_true", help="keep an existing cache file once it checks out "
                          "for this data, teacher and image size (a resumable pipeline's way to skip the work)")
    options.add_json(c)
    c.set_defaults(func=_cache)


def _cache(args):
    from vargface.context import parse_ctx
    from vargface.errors import VargfaceError
    from vargface.train.teacher import Teacher
    from vargface.train.teacher_cache import build_cache, default_cache_path

    if not args.teacher:
        raise VargfaceError("--teacher PREFIX,EPOCH is required")
    teacher = Teacher(args.teacher, ctx=parse_ctx(args.ctx))
    reused = args.reuse and os.path.exists(args.out or default_cache_path(args.dataset, teacher))
    path = build_cache(teacher, args.dataset, path=args.out, batch_size=options.total_batch(args),
                       image_size=args.image_size, overwrite=args.overwrite, reuse=args.reuse,
                       progress=not args.json)
    options.emit(args, f"teacher cache: {path}" + (" (existing, checked against this data and teacher: reused)"
                                                    if reused else ""), {"out": path, "reused": bool(reused)})
    return 0


def _distill(args):
    from vargface.train.config import config_from_args
    from vargface.train.distill import distill

    manifest = distill(config_from_args(args))
    return 128 + int(manifest["interrupted"]) if manifest.get("interrupted") else 0  # the shell's code
