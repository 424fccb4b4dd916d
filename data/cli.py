"""``vargface data synth|synth-ijb|lst|rec|unpack|check|pairs``: build, convert and verify InsightFace data sets."""
import argparse
import contextlib
import sys

from vargface import options
from vargface.data.ijb_layout import TARGETS as IJB_TARGETS


def _int_in(low, high, what):
    """An argparse type: an integer in [low, high] (argparse names the option in its error)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value}: {what} must be {low}..{high}")
        return value
    return parse


jpeg_quality = _int_in(1, 100, "a JPEG quality")
# What --overwrite replaces: a data set's three files (beside anything else), or an image root as a whole.
REPLACE_SET = "replace train.rec, train.idx and property in OUT; everything else there stays"
REPLACE_FOLDER = "replace the image folders in OUT; a folder that holds anything else is refused, naming it"


def register(subparsers):
    """Add the ``data`` command group to the ``vargface`` parser."""
    group = subparsers.add_parser("data", help="make, convert and check RecordIO face data sets and .bin packs",
                                  description=__doc__)
    sub = group.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    sub.required = True

    def common(p, workers=True, overwrite=True, strict=False):
        if workers:
            options.add_workers(p)
        if overwrite:
            options.add_overwrite(p, **({"help": overwrite} if isinstance(overwrite, str) else {}))
        if strict:
            p.add_argument("--strict", action="store_true",
                           help="reject non-image files, empty identity folders and unreadable images "
                                "instead of skipping them with a warning")
        options.add_json(p)

    p = sub.add_parser("synth", help="synthetic face-like identities, one folder per identity (or a .rec)")
    options.add_out(p, "output folder (image folders, or train.rec/train.idx/property with --rec)")
    p.add_argument("--identities", type=int, required=True)
    p.add_argument("--per-identity", type=int, required=True)
    options.add_image_size(p, default=112)
    options.add_seed(p)
    p.add_argument("--difficulty", type=float, default=1.0,
                   help="scale of per-image variation: pose, lighting, blur, noise, occlusion (default 1.0)")
    p.add_argument("--first-identity", type=int, default=0,
                   help="number of the first identity; disjoint ranges give disjoint identities")
    p.add_argument("--quality", type=jpeg_quality, default=95, help="JPEG quality")
    p.add_argument("--rec", action="store_true", help="write train.rec/train.idx/property instead of folders")
    common(p, overwrite=f"{REPLACE_FOLDER} (with --rec: {REPLACE_SET})")
    p.set_defaults(func=_synth)

    p = sub.add_parser("synth-ijb", help="an IJB-B/IJB-C-layout fixture (loose crops, meta files) of synthetic "
                                         "identities, for `vargface ijb` without the licensed data",
                       description="Loose crops of synthetic identities under random similarity transforms with "
                                   "their 5 landmarks and faceness scores, templates of 1-3 media of 1-3 frames, "
                                   "every genuine template pair and impostor pairs, and the 1:N gallery and probe "
                                   "files, named and formatted as InsightFace distributes IJB's meta files.")
    options.add_out(p, "output folder (loose_crop/, meta/): give it to `vargface ijb --root`")
    p.add_argument("--target", type=str.upper, choices=IJB_TARGETS, default="IJBC", metavar="IJBB|IJBC",
                   help="whose file names to use (default: %(default)s)")
    p.add_argument("--subjects", type=options.positive_int, default=8, metavar="N",
                   help="identities (default: %(default)s)")
    p.add_argument("--templates-per-subject", type=options.positive_int, default=3, metavar="N",
                   help="templates of each identity (default: %(default)s)")
    p.add_argument("--pairs", type=options.positive_int, default=None, metavar="N",
                   help="template pairs: every genuine pair plus random impostor pairs up to this many "
                        "(default: every pair of templates)")
    options.add_seed(p)
    p.add_argument("--difficulty", type=float, default=1.0, metavar="X",
                   help="per-image variation, as `data synth` (default 1.0)")
    p.add_argument("--first-identity", type=int, default=0, metavar="N", help="number of the first synthetic identity")
    p.add_argument("--quality", type=jpeg_quality, default=95, help="JPEG quality")
    common(p)
    p.set_defaults(func=_synth_ijb)

    p = sub.add_parser("lst", help="an InsightFace .lst from an image root (one folder per identity)")
    p.add_argument("image_root", metavar="IMAGE_ROOT")
    options.add_out(p, "output .lst file")
    common(p, workers=False, strict=True)
    p.set_defaults(func=_lst)

    p = sub.add_parser("rec", help="train.rec/train.idx/property from an image root or a .lst "
                                   "(5-point landmarks in the .lst align to the ArcFace template)")
    p.add_argument("source", metavar="SOURCE", help="image root (one folder per identity) or .lst file")
    options.add_out(p, "output data folder (train.rec, train.idx, property)")
    options.add_image_size(p, default=112, help="output image side")
    p.add_argument("--quality", type=jpeg_quality, default=95, help="JPEG quality of re-encoded images")
    options.add_root(p, default=None, help="folder the relative paths of a .lst refer to (default: its folder)")
    common(p, overwrite=REPLACE_SET, strict=True)
    p.set_defaults(func=_rec)

    p = sub.add_parser("unpack", help="a .rec set back to one folder per identity (stored bytes unchanged)")
    options.add_dataset(p)
    options.add_out(p, "output image root, one folder per identity")
    common(p, workers=False, overwrite=REPLACE_FOLDER)
    p.set_defaults(func=_unpack)

    p = sub.add_parser("check", help="verify a .rec set; exit 1 listing the first faults by record index")
    options.add_dataset(p)
    p.add_argument("--max-faults", type=int, default=20, help="faults to list (default 20)")
    common(p, overwrite=False)
    p.set_defaults(func=_check)

    p = sub.add_parser("pairs", help="a balanced verification pack (.bin) from an image root")
    p.add_argument("image_root", metavar="IMAGE_ROOT")
    options.add_out(p, "output verification pack (.bin)")
    p.add_argument("--pairs", type=int, required=True, help="number of pairs (half same, half different)")
    options.add_seed(p)
    options.add_image_size(p, default=112, help="image side in the pack")
    p.add_argument("--quality", type=jpeg_quality, default=95)
    common(p, strict=True)
    p.set_defaults(func=_pairs)


@contextlib.contextmanager
def _warnings_to_stderr(args):
    """Show skipped-input warnings as one plain line each."""
    import warnings

    from vargface.data.convert import DataWarning

    original = warnings.showwarning

    def show(message, category, *rest, **kw):
        if issubclass(category, DataWarning):
            print(f"vargface data {args.data_command}: warning: {message}", file=sys.stderr)
        else:
            original(message, category, *rest, **kw)

    with warnings.catch_warnings():
        warnings.simplefilter("always", DataWarning)
        warnings.showwarning = show
        yield


def _synth(args):
    from vargface.data import synth

    make = synth.make_synthetic_rec if args.rec else synth.make_synthetic
    result = make(args.out, args.identities, args.per_identity, size=args.image_size, seed=args.seed,
                  difficulty=args.difficulty, first_identity=args.first_identity, quality=args.quality,
                  workers=args.workers, overwrite=args.overwrite)
    images = result[0] if args.rec else result
    options.emit(args, f"wrote {images} images of {args.identities} identities to {args.out}",
                 {"out": args.out, "images": images, "identities": args.identities})
    return 0


def _synth_ijb(args):
    from vargface.data.synth_ijb import make_synthetic_ijb

    summary = make_synthetic_ijb(args.out, args.target, args.subjects, args.templates_per_subject, args.pairs,
                                 seed=args.seed, difficulty=args.difficulty, first_identity=args.first_identity,
                                 quality=args.quality, workers=args.workers, overwrite=args.overwrite)
    options.emit(args, f"wrote {summary['crops']} crops, {summary['templates']} templates of {args.subjects} "
                       f"identities and {summary['pairs']} template pairs to {args.out}", summary)
    return 0


def _lst(args):
    from vargface.data.convert import items_from_root, write_lst

    with _warnings_to_stderr(args):
        items = items_from_root(args.image_root, args.strict)
        write_lst(args.out, items, overwrite=args.overwrite)
    identities = items[-1].label + 1
    options.emit(args, f"wrote {len(items)} images of {identities} identities to {args.out}",
                 {"out": args.out, "images": len(items), "identities": identities})
    return 0


def _rec(args):
    from vargface.data.convert import to_rec

    with _warnings_to_stderr(args):
        images, classes = to_rec(args.source, args.out, size=args.image_size, quality=args.quality,
                                 workers=args.workers, strict=args.strict, overwrite=args.overwrite,
                                 image_root=args.root)
    options.emit(args, f"wrote {images} images of {classes} identities to {args.out}",
                 {"out": args.out, "images": images, "identities": classes})
    return 0


def _unpack(args):
    from vargface.data.convert import unpack

    images = unpack(args.dataset, args.out, overwrite=args.overwrite)
    options.emit(args, f"unpacked {images} images to {args.out}", {"out": args.out, "images": images})
    return 0


def _check(args):
    import json

    from vargface.data.convert import check

    report = check(args.dataset, workers=args.workers, max_faults=args.max_faults)
    if args.json:
        print(json.dumps(report, indent=2))
        return 1 if report["num_faults"] else 0
    size = report["image_size"]
    print(f"{args.dataset}: {report['images']} images, {report['identities']} identities"
          + ("" if report["has_header"] else " (no header record: a plain image list)")
          + (f", property {report['num_classes']} classes {size[1]}x{size[0]}" if size else ""))
    if report["num_faults"]:
        print(f"{report['num_faults']} fault(s):", file=sys.stderr)
        for key, message in report["faults"]:
            print(f"  {'-' if key is None else f'record {key}'}: {message}", file=sys.stderr)
        return 1
    print("ok")
    return 0


def _pairs(args):
    from vargface.data.convert import pairs_from_root

    with _warnings_to_stderr(args):
        count = pairs_from_root(args.image_root, args.out, args.pairs, seed=args.seed, size=args.image_size,
                                quality=args.quality, workers=args.workers, strict=args.strict,
                                overwrite=args.overwrite)
    options.emit(args, f"wrote {count} pairs to {args.out}", {"out": args.out, "pairs": count})
    return 0
