"""`vargface` subcommands of vargface.eval: verify, lfr features, tar-at-far, export, embed, compare."""
import json
import sys

from vargface import options


def _model(p):
    options.add_model(p)


def _device(p, per_batch_size=64):
    options.add_ctx(p)
    options.add_per_batch_size(p, per_batch_size)


def register(subparsers):
    """Add this package's subcommands to the `vargface` parser."""
    p = subparsers.add_parser(
        "verify", help="LFW/CFP-FP/AgeDB-30 style pair verification on .bin packs",
        description="Accuracy-Flip as InsightFace reports it: image + flip embeddings summed and L2-normalised, "
                    "squared L2 distance, thresholds 0..4 step 0.01, 10 folds (best threshold on 9, accuracy on "
                    "the 10th); plus exact TAR at each decade of FAR the set has impostor pairs for.")
    _model(p)
    options.add_target(p, required=True)
    _device(p)
    p.add_argument("--nfolds", type=int, default=10, help="cross-validation folds (default: %(default)s)")
    p.add_argument("--roc", metavar="PATH", help="draw the ROC curves (TAR against FAR, log scale) to this PNG")
    options.add_overwrite(p, help="replace an existing --roc file")
    options.add_json(p)
    p.set_defaults(func=_verify)

    p = subparsers.add_parser("lfr", help="LFR2019 challenge tools",
                              description="LFR2019 challenge tools (image-track feature files).")
    sub = p.add_subparsers(dest="lfr_command", metavar="{features}")
    sub.required = True
    f = sub.add_parser(
        "features", help="write the LFR2019 image-track feature file",
        description="Embed every image of the test list (image + flip, summed, L2-normalised) into the LFR2019 "
                    "binary (int32 rows, cols, cols*4, 5; then float32 rows in list order). Interrupted runs "
                    "resume from OUT.partial when rerun with the same weights, list and root (other ones are refused); "
                    "a finished OUT is replaced only with --overwrite.")
    f.add_argument("image_list", metavar="LIST", help="test file list, one image path per line")
    _model(f)
    options.add_root(f)
    options.add_out(f, "output feature file")
    options.add_overwrite(f)
    _device(f)
    options.add_json(f)
    f.set_defaults(func=_lfr_features)

    p = subparsers.add_parser(
        "tar-at-far", help="exact TAR at fixed FARs over all pairs of N features",
        description="Exact TAR at each FAR over all N(N-1)/2 pairs (cosine similarity), blockwise, keeping only "
                    "the highest impostor scores. A pair is accepted iff its score is strictly above the "
                    "(k+1)-th highest impostor score, k = floor(FAR * impostor pairs).")
    p.add_argument("features", metavar="FEATURES", help="(N, D) features: .npy, or an LFR2019 feature file")
    p.add_argument("labels", metavar="LABELS", help="(N,) identity labels: .npy, or a text file one per line")
    p.add_argument("--far", help="comma-separated FARs (default: 1e-8,1e-6,1e-4, each if the set has enough "
                                 "impostor pairs for it; with none of them, every decade it has)")
    p.add_argument("--tile", type=int, default=2048, help="rows/columns per matrix block (default: %(default)s)")
    options.add_json(p)
    p.set_defaults(func=_tar_at_far)

    p = subparsers.add_parser(
        "export", help="export a checkpoint to ONNX and check it against MXNet",
        description="ONNX export (dynamic batch axis) with MXNet's exporter faults fixed (PReLU slopes, "
                    "fix_gamma BatchNorm, FullyConnected flatten); then onnxruntime is run against MXNet on "
                    "random input and the export fails unless max|diff|/max|mxnet| <= --tolerance.")
    _model(p)
    options.add_out(p, "output .onnx file")
    options.add_overwrite(p)
    p.add_argument("--tolerance", type=float, default=1e-4, help="parity bound (default: %(default)s)")
    options.add_json(p)
    p.set_defaults(func=_export)

    p = subparsers.add_parser("embed", help="embed aligned face images into an .npy file",
                              description="L2-normalised embeddings (image + flip) of aligned 112x112 faces.")
    _model(p)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    options.add_out(p, "output .npy, one row per image in argument order")
    options.add_overwrite(p)
    p.add_argument("--no-flip", action="store_true", help="embed the image only, without its mirror")
    _device(p, 32)
    options.add_json(p)
    p.set_defaults(func=_embed)

    p = subparsers.add_parser("compare", help="cosine similarity of two aligned face images",
                              description="Cosine similarity of the L2-normalised (image + flip) embeddings.")
    _model(p)
    p.add_argument("image_a", metavar="A")
    p.add_argument("image_b", metavar="B")
    p.add_argument("--no-flip", action="store_true", help="embed the images only, without their mirrors")
    _device(p, 2)
    options.add_json(p)
    p.set_defaults(func=_compare)


def _embedder(args):
    from vargface.eval.embedder import FaceEmbedder
    from vargface.symbols.checkpoint import parse_model_arg

    prefix, epoch = parse_model_arg(args.model)
    return FaceEmbedder(prefix, epoch, ctx=args.ctx, batch_size=options.total_batch(args))


def _verify(args):
    from vargface.errors import VargfaceError
    from vargface.eval.verification import verify_model
    from vargface.symbols.checkpoint import parse_model_arg

    targets = [t for t in args.target.split(",") if t]
    if not targets:
        raise VargfaceError("--target: expected one or more .bin files, e.g. lfw.bin,cfp_fp.bin")
    if args.nfolds < 1:
        raise VargfaceError(f"--nfolds {args.nfolds}: expected a positive number of folds (10 as reported)")
    options.refuse_existing(args.roc, args.overwrite, option="--roc")
    prefix, epoch = parse_model_arg(args.model)
    results = verify_model(prefix, epoch, targets, ctx=args.ctx, batch_size=options.total_batch(args),
                           nrof_folds=args.nfolds, progress=not args.json)
    summary = {name: {"accuracy": r["accuracy"], "std": r["std"], "best_threshold": r["best_threshold"],
                      "pairs": r["pairs"], "fold_accuracy": r["fold_accuracy"],
                      "fold_thresholds": r["fold_thresholds"], "tar_at_far": r["tar_at_far"]}
               for name, r in results.items()}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        from vargface.eval.tar_at_far import no_tar_reason

        for name, r in summary.items():
            tars = ", ".join(f"{t['far']:.0e}: {t['tar']:.5f}" for t in r["tar_at_far"])
            print(f"[{name}] Accuracy-Flip: {r['accuracy']:.5f}+-{r['std']:.5f}  best threshold "
                  f"{r['best_threshold']:.2f}  ({r['pairs']} pairs)")
            print(f"[{name}] TAR@FAR: {tars or no_tar_reason(int((~results[name]['issame']).sum()))}")
    sys.stdout.flush()
    if args.roc:  # after the results, so a plot that cannot be written does not lose them
        _plot_roc(results, args.roc)
    return 0


def _plot_roc(results, path):
    """ROC curves (TAR against FAR on a log axis) of every set, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    from vargface.atomic import atomic_path
    from vargface.errors import VargfaceError

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, r in results.items():
        fpr, tpr, _ = roc_curve(r["issame"], -r["distances"])
        ax.step(fpr, tpr, where="post", label=f"{name} ({r['accuracy']:.4f})")
    ax.set_xscale("log")
    ax.set_xlabel("FAR (false accept rate)")
    ax.set_ylabel("TAR (true accept rate)")
    ax.set_ylim(0, 1.01)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("ROC, image + flip embeddings")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    except OSError as error:
        raise VargfaceError(f"--roc {path}: cannot write the plot ({error.strerror or error}); the results "
                            f"above are complete") from None
    finally:
        plt.close(fig)


def _lfr_features(args):
    from vargface.eval.lfr import extract_features
    from vargface.locks import OutputLock

    with OutputLock(args.out):  # the output and its resume files: one writer at a time
        options.refuse_existing(args.out, args.overwrite)
        embedder = _embedder(args)
        computed = extract_features(embedder, args.image_list, args.root, args.out, progress=not args.json)
    options.emit(args, f"wrote {args.out} ({computed} rows computed in this run, {embedder.embedding_size}-d)",
                 {"out": args.out, "computed": computed, "embedding_size": embedder.embedding_size})
    return 0


def _load_array(path, option):
    import numpy as np

    from vargface.errors import VargfaceError
    from vargface.eval.lfr import read_features

    try:
        if path.endswith(".npy"):
            return np.load(path, mmap_mode="r", allow_pickle=False)
        if option == "FEATURES":
            return read_features(path, mmap=True)
        with open(path, encoding="utf-8") as handle:
            return np.array([line.strip() for line in handle if line.strip()])
    except VargfaceError:
        raise
    except (OSError, ValueError) as error:
        raise VargfaceError(f"{option} {path}: cannot read it ({error}); expected a .npy file"
                            + (" or an LFR2019 feature file" if option == "FEATURES" else
                               " or a text file with one label per line")) from None


def _tar_at_far(args):
    from vargface.errors import VargfaceError
    from vargface.eval.tar_at_far import parse_fars, tar_at_far

    fars = None if args.far is None else parse_fars(args.far)
    features = _load_array(args.features, "FEATURES")
    labels = _load_array(args.labels, "LABELS")
    if args.tile < 1:
        raise VargfaceError(f"--tile: expected a positive number, got {args.tile}")
    if features.ndim != 2:
        raise VargfaceError(f"FEATURES {args.features}: expected an (N, D) array, got shape {features.shape}")
    if labels.ndim != 1 and not (labels.ndim == 2 and labels.shape[1] == 1):
        raise VargfaceError(f"LABELS {args.labels}: expected an (N,) array, got shape {labels.shape}")
    if len(features) != len(labels):
        raise VargfaceError(f"FEATURES {args.features} has {len(features)} rows but LABELS {args.labels} has "
                            f"{len(labels)}; expected one label per feature row")
    result = tar_at_far(features, labels, fars, tile=args.tile, progress=not args.json)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['n_images']} images, {result['n_genuine']} genuine pairs, {result['n_impostors']} impostor pairs")
    for skipped in result["skipped"]:
        print(f"skipped {skipped['reason']}")
    for r in result["results"]:
        print(f"TAR@FAR={r['far']:.0e}: {r['tar']:.5f}  (threshold {r['threshold']:.5f}, "
              f"{r['false_accepts']} false accepts)")
    return 0


def _export(args):
    from vargface.eval.embedder import load_embedding_model
    from vargface.eval.export import export_onnx
    from vargface.symbols.checkpoint import parse_model_arg

    options.refuse_existing(args.out, args.overwrite)
    prefix, epoch = parse_model_arg(args.model)
    sym, arg_params, aux_params, size = load_embedding_model(prefix, epoch)
    result = export_onnx(sym, arg_params, aux_params, args.out, input_size=size, tolerance=args.tolerance)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"wrote {args.out}: input (N, 3, {size}, {size}) RGB 0..255; parity with MXNet on random input: "
              f"max relative error {result['relative_error']:.2e} <= {args.tolerance:g} (OK)")
    return 0


def _embed(args):
    import numpy as np

    from vargface.atomic import atomic_path

    options.refuse_existing(args.out, args.overwrite)
    embeddings = _embedder(args).embed_files(args.images, flip=not args.no_flip, progress=not args.json)
    with atomic_path(args.out) as tmp, open(tmp, "wb") as handle:
        np.save(handle, embeddings)
    options.emit(args, f"wrote {args.out}: {embeddings.shape[0]} x {embeddings.shape[1]} float32, rows L2-normalised",
                 {"out": args.out, "rows": int(embeddings.shape[0]), "dim": int(embeddings.shape[1])})
    return 0


def _compare(args):
    embeddings = _embedder(args).embed_files([args.image_a, args.image_b], flip=not args.no_flip)
    similarity = float(embeddings[0] @ embeddings[1])
    options.emit(args, f"{similarity:.6f}", {"a": args.image_a, "b": args.image_b, "cosine": similarity})
    return 0
