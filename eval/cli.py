"""`vargface` subcommands of vargface.eval: verify, lfr features, tar-at-far, export, embed, compare, ijb, identify."""
import json
import sys

from vargface import options
from vargface.data.ijb_layout import TARGETS as IJB_TARGETS


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
                              description="L2-normalised embeddings (image + flip) of aligned faces, one row per "
                                          "image file in argument order. Images of any side are resized to the "
                                          "checkpoint's input side (OpenCV area when shrinking, bilinear when "
                                          "enlarging).")
    _model(p)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    options.add_out(p, "output .npy, one row per image in argument order")
    options.add_overwrite(p)
    p.add_argument("--no-flip", action="store_true", help="embed the image only, without its mirror")
    _device(p, 32)
    options.add_json(p)
    p.set_defaults(func=_embed)

    p = subparsers.add_parser("compare", help="cosine similarity of two aligned face images",
                              description="Cosine similarity of the L2-normalised (image + flip) embeddings of two "
                                          "aligned faces: 1 for the same direction, 0 for unrelated ones. Where "
                                          "'same person' begins depends on the model: `vargface verify` finds that "
                                          "threshold on a labelled pair set, as a squared distance d between the "
                                          "unit embeddings (cosine = 1 - d/2).")
    _model(p)
    p.add_argument("image_a", metavar="A")
    p.add_argument("image_b", metavar="B")
    p.add_argument("--no-flip", action="store_true", help="embed the images only, without their mirrors")
    _device(p, 2)
    options.add_json(p)
    p.set_defaults(func=_compare)

    p = subparsers.add_parser(
        "ijb", help="IJB-B/IJB-C 1:1 and 1:N template evaluation, as InsightFace's",
        description="InsightFace's IJB-B/IJB-C evaluation on its distribution of the data (ROOT/loose_crop, "
                    "ROOT/meta): each crop aligned by its 5 landmarks, crop and mirror embedded; test mode NxDyFz; "
                    "templates pooled (media mean, template sum, L2); pair score a dot product. 1:1: TAR at FAR "
                    "1e-6..1e-1 by InsightFace's nearest-ROC-point rule (comparable with published tables) and "
                    "exactly (the best TAR with FAR <= f), each FAR only when the pair list has 1/FAR impostors. "
                    "1:N (when the gallery and probe files are there): rank-1/5/10 and TPIR at FPIR 0.01, 0.1 on "
                    "G1, G2 and their mean. The per-crop features are kept beside --out under the checkpoint's "
                    "checksum, reused by later runs of the same model and resumed after an interruption.")
    _model(p)
    p.add_argument("--root", required=True, metavar="DIR", help="the target's folder holding loose_crop/ and meta/")
    p.add_argument("--target", required=True, type=str.upper, choices=IJB_TARGETS, metavar="IJBB|IJBC",
                   help="the benchmark: IJBB or IJBC")
    p.add_argument("--mode", default="N1D1F2", metavar="NxDyFz",
                   help="N1 keep / N0 remove the feature norm, D1 / D0 weigh by faceness or not, F2 sum / F1 "
                        "concatenate the mirror's feature, F0 no mirror (default: %(default)s)")
    options.add_out(p, "results (JSON); the per-crop features go beside it (OUT-STEM.features-KEY.bin)")
    p.add_argument("--roc", metavar="PATH", help="draw the 1:1 ROC curve to this PNG")
    options.add_overwrite(p, help="replace an existing --out / --roc (features of the same model are reused)")
    _device(p)
    options.add_workers(p)
    options.add_json(p)
    p.set_defaults(func=_ijb)

    p = subparsers.add_parser(
        "identify", help="1:N identification against up to millions of distractors (MegaFace protocol)",
        description="MegaFace challenge 1: for each probe identity, each image in turn is the probe with one other "
                    "image of it in the gallery among D distractors (the first D rows, noise removed); rank-k "
                    "identification rate at D = 10, 100, ..., 1M (those there are distractors for). Exact: the "
                    "distractors are scored a block at a time, keeping each probe's top-k scores.")
    p.add_argument("probes", metavar="PROBES", help="probe features: .npy, or an LFR2019 feature file")
    p.add_argument("probe_list", metavar="PROBE_LIST",
                   help="one line per probe row: its image path, IDENTITY/IMAGE (the list given to `lfr features`)")
    p.add_argument("distractors", metavar="DISTRACTORS", help="distractor features: .npy, or an LFR2019 feature "
                                                              "file (memory-mapped)")
    p.add_argument("--distractor-list", metavar="LIST", help="one image path per distractor row (for --noise)")
    p.add_argument("--noise", action="append", metavar="FILE",
                   help="a list of mislabelled images to leave out (MegaFace's, FaceScrub's); repeatable")
    p.add_argument("--sizes", metavar="D,D,...",
                   help="comma-separated gallery sizes in distractors (default: the powers of ten from 10 to 10^6)")
    p.add_argument("--rank", type=options.positive_int, default=10, metavar="K",
                   help="highest rank reported (default: 10)")
    p.add_argument("--tile", type=options.positive_int, default=8192, metavar="N",
                   help="distractors per matrix block (default: %(default)s)")
    p.add_argument("--cmc", metavar="PATH", help="draw the CMC curves and rank-1 by gallery size to this PNG")
    options.add_overwrite(p, help="replace an existing --cmc file")
    options.add_json(p)
    p.set_defaults(func=_identify)


def _embedder(args):
    from vargface.eval.embedder import FaceEmbedder
    from vargface.symbols.checkpoint import parse_model_arg

    prefix, epoch = parse_model_arg(args.model)
    return FaceEmbedder(prefix, epoch, ctx=args.ctx, batch_size=options.total_batch(args))


def _verify(args):
    from vargface.errors import VargfaceError

    targets = [t for t in args.target.split(",") if t]
    if not targets:
        raise VargfaceError("--target: expected one or more .bin files, e.g. lfw.bin,cfp_fp.bin")
    if args.nfolds < 1:
        raise VargfaceError(f"--nfolds {args.nfolds}: expected a positive number of folds (10 as reported)")
    with options.claimed(args.overwrite, (args.roc, "--roc")):
        _verify_and_report(args, targets)
    return 0


def _verify_and_report(args, targets):
    from vargface.eval.verification import verify_model
    from vargface.symbols.checkpoint import parse_model_arg

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


def _plot_roc(results, path):
    """ROC curves (TAR against FAR on a log axis) of every set, written atomically as PNG."""
    from sklearn.metrics import roc_curve

    from vargface.eval.plots import figure, log_far_axis, save_figure

    fig, axes = figure()
    for name, r in results.items():
        fpr, tpr, _ = roc_curve(r["issame"], -r["distances"])
        axes[0, 0].step(fpr, tpr, where="post", label=f"{name} ({r['accuracy']:.4f})")
    log_far_axis(axes[0, 0], "ROC, image + flip embeddings")
    save_figure(fig, path, "--roc")


def _lfr_features(args):
    from vargface.eval.lfr import extract_features

    with options.claimed(args.overwrite, (args.out, "--out")):  # the output and its resume files
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
        if option != "LABELS":
            return read_features(path, mmap=True)
        with open(path, encoding="utf-8") as handle:
            return np.array([line.strip() for line in handle if line.strip()])
    except VargfaceError:
        raise
    except (OSError, ValueError) as error:
        raise VargfaceError(f"{option} {path}: cannot read it ({error}); expected a .npy file"
                            + (" or an LFR2019 feature file" if option != "LABELS" else
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

    prefix, epoch = parse_model_arg(args.model)
    with options.claimed(args.overwrite, (args.out, "--out")):
        sym, arg_params, aux_params, size = load_embedding_model(prefix, epoch)
        result = export_onnx(sym, arg_params, aux_params, args.out, input_size=size, tolerance=args.tolerance)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"wrote {args.out}: input (N, 3, {size}, {size}) RGB 0..255; parity with MXNet on random input: "
              f"max relative error {result['relative_error']:.2e} <= {args.tolerance:g} (OK)")
    return 0


def _refuse_folders(paths):
    """Image arguments that are folders: name the first and show how to pass its images (rows follow the
    argument order, so a folder's files are listed explicitly, in the order wanted)."""
    import os

    from vargface.errors import VargfaceError

    folder = next((p for p in paths if os.path.isdir(p)), None)
    if folder is not None:
        raise VargfaceError(f"IMAGE {folder} is a folder; pass image files, e.g. {os.path.join(folder, '*.jpg')} "
                            f"(one output row per file, in the order given)")


def _embed(args):
    import numpy as np

    from vargface.atomic import atomic_path

    _refuse_folders(args.images)
    with options.claimed(args.overwrite, (args.out, "--out")):
        embeddings = _embedder(args).embed_files(args.images, flip=not args.no_flip, progress=not args.json)
        with atomic_path(args.out) as tmp, open(tmp, "wb") as handle:
            np.save(handle, embeddings)
    options.emit(args, f"wrote {args.out}: {embeddings.shape[0]} x {embeddings.shape[1]} float32, rows L2-normalised",
                 {"out": args.out, "rows": int(embeddings.shape[0]), "dim": int(embeddings.shape[1])})
    return 0


def _compare(args):
    _refuse_folders([args.image_a, args.image_b])
    embeddings = _embedder(args).embed_files([args.image_a, args.image_b], flip=not args.no_flip)
    similarity = float(embeddings[0] @ embeddings[1])
    embedded = "image" if args.no_flip else "image + mirror"
    options.emit(args, f"cosine similarity {similarity:.6f} of {args.image_a} and {args.image_b} (embeddings of "
                       f"{embedded}; 1 = same direction, 0 = unrelated)",
                 {"a": args.image_a, "b": args.image_b, "cosine": similarity})
    return 0


def _ijb(args):
    from vargface.atomic import atomic_path
    from vargface.eval.ijb import evaluate, format_result
    from vargface.eval.templates import parse_mode

    mode = parse_mode(args.mode)
    with options.claimed(args.overwrite, (args.out, "--out"), (args.roc, "--roc")):
        result, skipped, scores, genuine = evaluate(_embedder(args), args.root, args.target, args.out, mode,
                                                    workers=args.workers, overwrite=args.overwrite,
                                                    progress=not args.json)
        with atomic_path(args.out) as tmp, open(tmp, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
        print(json.dumps(result, indent=2) if args.json else format_result(result, skipped))
        sys.stdout.flush()
        if args.roc:
            from vargface.eval.plots import plot_ijb_roc

            plot_ijb_roc(result, scores, genuine, args.roc)
    return 0


def _identify(args):
    import numpy as np

    from vargface.errors import VargfaceError
    from vargface.eval.identify import identify, identities_of, is_noise, read_names, read_noise

    sizes = None  # identify's default
    for item in args.sizes.split(",") if args.sizes is not None else ():
        if not item.strip().isdigit() or int(item) < 1:
            raise VargfaceError(f"--sizes: {item!r} is not a positive whole number; expected e.g. 10,100,1000")
        sizes = (sizes or []) + [int(item)]
    with options.claimed(args.overwrite, (args.cmc, "--cmc")):
        probes, distractors = _load_array(args.probes, "PROBES"), _load_array(args.distractors, "DISTRACTORS")
        names = read_names(args.probe_list, "PROBE_LIST")
        distractor_names = read_names(args.distractor_list, "--distractor-list") if args.distractor_list else None
        for what, array, listed, path in (("PROBES", probes, names, args.probe_list),
                                          ("DISTRACTORS", distractors, distractor_names, args.distractor_list)):
            if array.ndim != 2:
                raise VargfaceError(f"{what}: expected an (N, D) array, got shape {array.shape}")
            if listed is not None and len(listed) != len(array):
                raise VargfaceError(f"{what} has {len(array)} rows but {path} lists {len(listed)} images; expected "
                                    f"one line per row")
        noise = read_noise(args.noise)
        keep_probes = ~is_noise(names, noise)
        keep = ~is_noise(distractor_names, noise) if distractor_names is not None and noise else None
        result = identify(np.asarray(probes)[keep_probes], identities_of(names)[keep_probes], distractors, keep,
                          sizes, args.rank, args.tile, progress=not args.json,
                          probe_rows=np.flatnonzero(keep_probes))
        result["noise_removed"] = {"probes": int((~keep_probes).sum()),
                                   "distractors": 0 if keep is None else int((~keep).sum())}
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"{result['probes']} probe images of {result['identities']} identities ({result['trials']} "
                  f"trials), {result['distractors']} distractors; noise left out: "
                  f"{result['noise_removed']['probes']} probes, {result['noise_removed']['distractors']} distractors")
            print(f"{'distractors':>12}{'rank-1':>10}{f'rank-{args.rank}':>10}")
            for size, r in result["results"].items():
                print(f"{int(size):>12}{100 * r['rank']['1']:>10.2f}{100 * r['rank'][str(args.rank)]:>10.2f}")
            for skipped in result["skipped"]:
                print(f"skipped {skipped['reason']}")
        sys.stdout.flush()
        if args.cmc:
            from vargface.eval.plots import plot_cmc

            plot_cmc(result, args.cmc)
    return 0
