"""IJB-B / IJB-C evaluation on InsightFace's distribution of the data, read unchanged.

``ROOT/loose_crop/NAME`` are the crops; ``ROOT/meta/`` holds, for ``t`` = ijbb or ijbc:
``t_name_5pts_score.txt`` (NAME, 5 landmarks x y in crop pixels (or 68), faceness), ``t_face_tid_mid.txt`` (NAME,
template, media; the same crops in the same order), ``t_template_pair_label.txt`` (template, template, 1 genuine /
0 impostor) and for 1:N ``t_1N_gallery_G1.csv``, ``_G2.csv`` (IJB-B: ``_S1``, ``_S2``) and ``t_1N_probe_mixed.csv``
(a header row; columns 0 and 1 are template and subject).

Each crop as InsightFace's MXNet IJB evaluation does: the 5 landmarks mapped onto the ArcFace 112x112 template by
a least-squares similarity (Umeyama), ``cv2.warpAffine`` with a black border, BGR to RGB; the crop and its mirror
embedded and each output L2-normalised. Those two halves per crop are kept in a feature file beside ``--out``
(named after the checkpoint's checksum, so another model never reads them), written in order and resumable after
a kill; the test mode, templates and scores are computed from it (vargface.eval.templates)."""
import csv
import functools
import hashlib
import io
import json
import os
import warnings

import numpy as np

from vargface.errors import VargfaceError

FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
ALIGNED_SIDE = 112  # InsightFace aligns IJB crops at 112x112 whatever the network; other inputs are resized after
CACHE_FORMAT = 1


# ---------------------------------------------------------------- meta files


def open_layout(root, target):
    """The target's files (vargface.data.ijb_layout), refused when its folders are not there."""
    from vargface.data.ijb_layout import Layout

    found = Layout(root, target)
    if not os.path.isdir(found.crops) or not os.path.isdir(found.meta):
        raise VargfaceError(f"--root {found.root}: expected InsightFace's IJB layout, the folders loose_crop/ and "
                            f"meta/ (e.g. IJB_release/{found.target})")
    return found


def _open_text(path, binary=False):
    try:
        return open(path, "rb") if binary else open(path, encoding="utf-8", newline="")
    except OSError as error:
        raise VargfaceError(f"{path}: cannot read it ({error.strerror}); it is one of the IJB meta files") from None


def _lines(path):
    """(line number, whitespace-separated fields) of each non-blank line."""
    with _open_text(path) as handle:
        try:
            for number, line in enumerate(handle, 1):
                fields = line.split()
                if fields:
                    yield number, fields
        except UnicodeDecodeError:
            raise VargfaceError(f"{path}: not a UTF-8 text file") from None


def five_points(landmarks):
    """5 landmarks (eye centres, nose tip, mouth corners) from 5 or 68 (iBUG order) points, as InsightFace reduces
    them: eyes (36+39)/2 and (42+45)/2, nose 30, mouth 48 and 54."""
    landmarks = np.asarray(landmarks, np.float32).reshape(-1, 2)
    if len(landmarks) == 5:
        return landmarks
    if len(landmarks) != 68:
        raise VargfaceError(f"expected 5 or 68 landmarks, got {len(landmarks)}")
    return np.stack([(landmarks[36] + landmarks[39]) / 2, (landmarks[42] + landmarks[45]) / 2, landmarks[30],
                     landmarks[48], landmarks[54]])


class Images:
    """The crops of a target: names, (N, 5, 2) landmarks, faceness, template and media of each."""

    def __init__(self, layout):
        self.layout = layout
        names, lines, rows = [], [], []
        for number, fields in _lines(layout.images):
            if len(fields) == 12:
                rows.append(fields[1:])
            elif len(fields) == 138:
                rows.append(_five_of_68(fields, layout.images, number))
            else:
                raise VargfaceError(f"{layout.images}, line {number}: expected a crop name, 5 landmarks (x y) and a "
                                    f"faceness score (12 fields) or 68 landmarks (138), found {len(fields)} fields")
            names.append(fields[0])
            lines.append(number)
        if not names:
            raise VargfaceError(f"{layout.images}: no crops listed")
        self.names, self.lines = names, lines
        values = _numbers(rows, np.float32, layout.images, lines, "landmarks and faceness must be numbers")
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if bad.size:
            raise VargfaceError(f"{layout.images}, line {lines[bad[0]]}: a landmark or the faceness is not finite")
        self.landmarks, self.faceness = values[:, :10].reshape(-1, 5, 2), values[:, 10].copy()
        self.templates, self.medias = self._read_templates(layout)

    def _read_templates(self, layout):
        rows, numbers, row = [], [], 0
        for number, fields in _lines(layout.templates):
            if len(fields) != 3:
                raise VargfaceError(f"{layout.templates}, line {number}: expected 'NAME TEMPLATE MEDIA', found "
                                    f"{' '.join(fields)!r}")
            if row >= len(self.names):
                raise VargfaceError(f"{layout.templates}, line {number}: more crops than the {len(self.names)} of "
                                    f"{layout.images}")
            if fields[0] != self.names[row]:
                raise VargfaceError(f"{layout.templates}, line {number}: names {fields[0]}, but line "
                                    f"{self.lines[row]} of {layout.images} names {self.names[row]}; the two files "
                                    f"list the same crops in the same order")
            rows.append(fields[1:])
            numbers.append(number)
            row += 1
        if row != len(self.names):
            raise VargfaceError(f"{layout.templates}: {row} crops, but {layout.images} lists {len(self.names)} (is "
                                f"one of them truncated?)")
        ids = _numbers(rows, np.int64, layout.templates, numbers, "template and media must be integers")
        return ids[:, 0].copy(), ids[:, 1].copy()

    def __len__(self):
        return len(self.names)

    def crop_path(self, row):
        return os.path.join(self.layout.crops, self.names[row])

    def check_crops(self, start=0):
        """Every crop from row ``start`` on exists: a missing one fails now, naming it, not hours into a run."""
        for row in range(start, len(self.names)):
            if not os.path.isfile(self.crop_path(row)):
                raise VargfaceError(f"{self.crop_path(row)}: no such crop (line {self.lines[row]} of "
                                    f"{self.layout.images} names it)")

    def digest(self):
        """Fingerprint of what the features depend on: the crop names and landmarks (not the faceness)."""
        digest = hashlib.sha1("\n".join(self.names).encode("utf-8"))
        digest.update(np.ascontiguousarray(self.landmarks).tobytes())
        return digest.hexdigest()


def _five_of_68(fields, path, number):
    """The 11 numbers of a 5-point line from a 68-point one."""
    try:
        values = np.array(fields[1:], dtype=np.float32)
    except ValueError:
        raise VargfaceError(f"{path}, line {number}: landmarks and faceness must be numbers") from None
    return list(five_points(values[:-1]).reshape(-1)) + [values[-1]]


def _numbers(rows, dtype, path, lines, expected):
    """One array from rows of number strings (one conversion in C); a bad row is an error naming its line."""
    try:
        return np.array(rows, dtype=dtype)
    except ValueError:
        for row, fields in enumerate(rows):
            try:
                np.array(fields, dtype=dtype)
            except ValueError:
                raise VargfaceError(f"{path}, line {lines[row]}: {expected}, found {' '.join(map(str, fields))!r}") \
                    from None
        raise


def _is_int(text):
    return text.lstrip("+-").isdigit()


def _int_table(path, columns, chunk_bytes=8 << 20):
    """Yield (first line number, text, (n, columns) int64) of a whitespace-separated integer file, a few MB of text
    at a time (NumPy's C parser); a malformed line is an error naming the file and line."""
    with _open_text(path, binary=True) as handle:
        line = 1
        while True:
            text = handle.read(chunk_bytes)
            if not text:
                return
            text += handle.readline()
            try:
                with warnings.catch_warnings():  # a chunk of blank lines is no data, not a fault
                    warnings.simplefilter("ignore", UserWarning)
                    table = np.loadtxt(io.BytesIO(text), dtype=np.int64, ndmin=2, comments=None)
            except ValueError:
                table = None
            if table is None or (table.size and table.shape[1] != columns):
                number, fields = _bad_line(text, line, columns)
                raise VargfaceError(f"{path}, line {number}: expected {columns} integers, found {fields!r}")
            yield line, text, table.reshape(-1, columns)
            line += text.count(b"\n")


def _bad_line(text, first, columns):
    for number, raw in enumerate(text.split(b"\n"), first):
        fields = raw.split()
        if fields and (len(fields) != columns or not all(_is_int(f.decode("latin-1")) for f in fields)):
            return number, raw.decode("utf-8", "replace").strip()
    return first, ""


def _line_of_row(text, first, row):
    """The file line number of data row ``row`` in a chunk (blank lines are not rows)."""
    seen = -1
    for number, raw in enumerate(text.split(b"\n"), first):
        if raw.strip():
            seen += 1
            if seen == row:
                return number
    return first


def _rows_or_error(ids, wanted, path, text, first, source):
    from vargface.eval.templates import rows_of

    rows, found = rows_of(ids, wanted)
    if not found.all():
        bad = int(np.flatnonzero(~found)[0])
        raise VargfaceError(f"{path}, line {_line_of_row(text, first, bad)}: template {int(wanted[bad])} is not in "
                            f"{source}")
    return rows


def read_pairs(layout, template_ids):
    """(first rows, second rows, genuine) of the template pair list, as rows of ``template_ids``; checked whole
    before any features are computed."""
    firsts, seconds, labels = [], [], []
    for first_line, text, table in _int_table(layout.pairs, 3):
        bad = np.flatnonzero((table[:, 2] != 0) & (table[:, 2] != 1))
        if bad.size:
            raise VargfaceError(f"{layout.pairs}, line {_line_of_row(text, first_line, int(bad[0]))}: label "
                                f"{int(table[bad[0], 2])}; expected 1 (genuine) or 0 (impostor)")
        for column, into in ((0, firsts), (1, seconds)):
            into.append(_rows_or_error(template_ids, table[:, column], layout.pairs, text, first_line,
                                       layout.templates).astype(np.int32))
        labels.append(table[:, 2].astype(bool))
    if not labels:
        raise VargfaceError(f"{layout.pairs}: no template pairs listed")
    return np.concatenate(firsts), np.concatenate(seconds), np.concatenate(labels)


def read_subjects(path, template_ids, source, one_per_subject=False):
    """(rows of ``template_ids``, subject ids) of the templates of a 1:N CSV (a header row, then one row per image:
    template, subject, ...)."""
    from vargface.eval.templates import rows_of

    subject_of, line_of = {}, {}
    with _open_text(path) as handle:
        for number, record in enumerate(csv.reader(handle), 1):
            if number == 1 or not "".join(record).strip():
                continue
            if len(record) < 2 or not (_is_int(record[0].strip()) and _is_int(record[1].strip())):
                raise VargfaceError(f"{path}, line {number}: expected TEMPLATE_ID,SUBJECT_ID,... (two integers "
                                    f"first), found {','.join(record)[:80]!r}")
            template, subject = int(record[0]), int(record[1])
            if subject_of.setdefault(template, subject) != subject:
                raise VargfaceError(f"{path}, line {number}: template {template} has subject {subject}, but line "
                                    f"{line_of[template]} gives it subject {subject_of[template]}")
            line_of.setdefault(template, number)
    if not subject_of:
        raise VargfaceError(f"{path}: no templates listed")
    templates = np.array(list(subject_of), np.int64)
    subjects = np.array(list(subject_of.values()), np.int64)
    rows, found = rows_of(template_ids, templates)
    if not found.all():
        template = int(templates[~found][0])
        raise VargfaceError(f"{path}, line {line_of[template]}: template {template} is not in {source}")
    if one_per_subject:
        unique, counts = np.unique(subjects, return_counts=True)
        if (counts > 1).any():
            subject = int(unique[counts > 1][0])
            lines = sorted(line_of[t] for t, s in subject_of.items() if s == subject)
            raise VargfaceError(f"{path}, line {lines[1]}: a second gallery template of subject {subject} (the "
                                f"first is on line {lines[0]}); a gallery holds one template per subject")
    return rows, subjects


# ---------------------------------------------------------------- per-crop pipeline


def aligned_crop(image, landmarks):
    """A loose crop (BGR) -> the 112x112 RGB face InsightFace's IJB evaluation feeds: the similarity from the 5
    landmarks to the ArcFace template (x + 8), cv2.warpAffine (bilinear, border 0), BGR to RGB."""
    from vargface.data.images import align

    return np.ascontiguousarray(align(image, landmarks, (ALIGNED_SIDE, ALIGNED_SIDE))[..., ::-1])


def _load_crop(row, images):
    from vargface.data.images import decode

    path = images.crop_path(row)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise VargfaceError(f"{path}: cannot read the crop ({error.strerror}; line {images.lines[row]} of "
                            f"{images.layout.images})") from None
    return aligned_crop(decode(data, f"{path} (line {images.lines[row]} of {images.layout.images})"),
                        images.landmarks[row])


def embed_crops(runner, crops):
    """(n, 2D) float32: [L2(net(crop)), L2(net(mirror))] of RGB uint8 crops, resized to the network's side by the
    runner's one rule when it is not 112."""
    from vargface.eval.templates import l2_normalise_rows

    x = runner.prepare(crops)
    mirror = np.ascontiguousarray(x[:, :, :, ::-1])
    return np.concatenate([l2_normalise_rows(runner.forward(x)), l2_normalise_rows(runner.forward(mirror))], 1)


class FeatureCache:
    """Per-crop features of one model on one crop list: an LFR2019-format feature file ``path`` (rows in meta
    order, [image, mirror] halves) and ``path.json`` (what they were computed from, rows done).

    Rows are written into ``path.partial`` (its room reserved at the start, `vargface.eval.lfr.create_partial`) a
    chunk at a time, each chunk synced before ``path.json`` counts it, so a kill loses at most the chunk in flight;
    a rerun with the same inputs continues at the last counted row. A file made from other inputs is refused unless
    ``overwrite``."""

    def __init__(self, path, identity, overwrite=False):
        self.path, self.partial, self.state = path, path + ".partial", path + ".json"
        self.identity, self.overwrite = identity, overwrite
        self.rows, self.cols = identity["rows"], identity["cols"]

    def _recorded(self):
        try:
            with open(self.state, encoding="utf-8") as handle:
                state = json.load(handle)
            return state if isinstance(state, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _refuse(self, state):
        recorded = state.get("identity") if isinstance(state.get("identity"), dict) else {}
        changed = ", ".join(key for key in self.identity if recorded.get(key) != self.identity[key])
        raise VargfaceError(f"{self.path} holds features computed from other inputs ({changed or 'unrecorded'}); "
                            f"pass --overwrite to recompute them, or use another --out")

    def finished(self):
        """The finished features (read-only, memory-mapped), or None."""
        from vargface.eval.lfr import read_features

        state = self._recorded()
        if not os.path.exists(self.path):
            return None
        if state is None or state.get("identity") != self.identity or state.get("done") != self.rows:
            if not self.overwrite:
                self._refuse(state or {})
            return None
        return read_features(self.path, mmap=True)

    def resume(self):
        """Rows already computed (0 for a fresh start, which creates the partial file with its room reserved)."""
        from vargface.eval.lfr import HEADER_BYTES, ROW, create_partial

        state = self._recorded() or {}
        done = 0
        if os.path.exists(self.partial) and state.get("identity") == self.identity:
            done = int(state.get("done", 0))
            if os.path.getsize(self.partial) != HEADER_BYTES + self.rows * self.cols * ROW.itemsize:
                done = 0  # not the file this run would make: start over
        elif os.path.exists(self.partial) and state and not self.overwrite:
            self._refuse(state)
        if done == 0:
            create_partial(self.partial, self.rows, self.cols)
            self._record(0)
        return done

    def append(self, block, done):
        """Write rows after the first ``done``; returns the new count."""
        from vargface.atomic import write_errors
        from vargface.eval.lfr import write_rows

        with write_errors(self.partial), open(self.partial, "r+b") as handle:
            done = write_rows(handle, block, done, self.cols)
        self._record(done)
        return done

    def finish(self):
        from vargface.atomic import write_errors
        from vargface.eval.lfr import read_features

        with write_errors(self.partial):
            os.replace(self.partial, self.path)
        return read_features(self.path, mmap=True)

    def _record(self, done):
        from vargface.atomic import atomic_path

        with atomic_path(self.state) as tmp, open(tmp, "w", encoding="utf-8") as handle:
            json.dump({"identity": self.identity, "done": done}, handle, indent=1)


def cache_path(out, checksum):
    """The feature file beside ``out``: OUT-STEM.features-KEY.bin, KEY a digest of the checkpoint's checksum."""
    key = hashlib.sha1(checksum.encode("utf-8")).hexdigest()[:12]
    return f"{os.path.splitext(os.fspath(out))[0]}.features-{key}.bin"


def crop_features(embedder, images, out, workers=None, overwrite=False, progress=True):
    """Per-crop [image, mirror] features of every crop (resuming a killed run), memory-mapped from the cache, whose
    lock is held while it is read or written."""
    from vargface.locks import OutputLock

    # not the folder: a moved or copied data set keeps its features
    identity = {"format": CACHE_FORMAT, "weights": embedder.checksum, "crops": images.digest(), "rows": len(images),
                "cols": 2 * embedder.embedding_size}
    cache = FeatureCache(cache_path(out, embedder.checksum), identity, overwrite)
    with OutputLock(cache.path):  # runs with other --out files of one stem share it
        return _fill(cache, embedder, images, workers, progress)


def _fill(cache, embedder, images, workers, progress):
    """The finished features of ``cache``, computing (or resuming) the rows it lacks."""
    from vargface.data.parallel import imap_ordered
    from vargface.options import progress_bar

    ready = cache.finished()
    if ready is not None:
        return ready
    done = cache.resume()
    images.check_crops(done)
    chunk = embedder.batch_size * 4  # rows per sync; chunks start at multiples of it, so a resumed run batches alike
    crops = imap_ordered(functools.partial(_load_crop, images=images), range(done, len(images)), workers,
                         ahead=2 * chunk)
    with progress_bar(total=len(images), initial=done, unit="crop", desc=f"{images.layout.target} features",
                      enabled=progress) as bar:
        while done < len(images):
            batch = [next(crops) for _ in range(min(chunk, len(images) - done))]
            done = cache.append(embed_crops(embedder, batch), done)
            bar.update(len(batch))
    return cache.finish()


# ---------------------------------------------------------------- the protocol


def evaluate(embedder, root, target, out, mode, workers=None, overwrite=False, progress=True):
    """The whole IJB 1:1 (and 1:N when its files are there) evaluation -> (result dict, the FARs skipped for too
    few impostors, pair scores, pair labels). Every meta file is read and checked before any crop is embedded."""
    from vargface.eval.tar_at_far import split_measurable, tar_at_far_nearest, tar_from_scores
    from vargface.eval.templates import mean_identification, mode_name, open_set_identification, pair_scores, \
        template_features

    files = open_layout(root, target)
    images = Images(files)
    template_ids = np.unique(images.templates)
    first, second, genuine = read_pairs(files, template_ids)
    searches = {}
    galleries = files.galleries if files.has_1n else {}
    if galleries:
        probes = read_subjects(files.probes, template_ids, files.templates)
        searches = {name: read_subjects(path, template_ids, files.templates, one_per_subject=True)
                    for name, path in sorted(galleries.items())}
    raw = crop_features(embedder, images, out, workers=workers, overwrite=overwrite, progress=progress)
    ids, feats = template_features(raw, images.faceness, images.templates, images.medias, mode)
    scores = pair_scores(feats, first, second)
    n_impostors = int((~genuine).sum())
    fars, skipped = split_measurable(FARS, n_impostors)
    if not genuine.any() or not fars:
        raise VargfaceError(f"{files.pairs}: {int(genuine.sum())} genuine and {n_impostors} impostor pairs; TAR@FAR "
                            f"needs both, and at least 10 impostors")
    exact = tar_from_scores(scores[genuine], scores[~genuine], n_impostors, fars)
    identification = {}
    if searches:
        for name, (rows, subjects) in searches.items():
            identification[name] = open_set_identification(feats[probes[0]], probes[1], feats[rows], subjects)
        identification["mean"] = mean_identification([identification[name] for name in searches])
    result = {"target": files.target, "images": len(images), "templates": int(len(ids)), "pairs": int(len(scores)),
              "genuine": int(genuine.sum()), "mode": mode_name(mode),
              "tar_at_far": {f"{r['far']:g}": r["tar"] for r in tar_at_far_nearest(scores, genuine, fars)},
              "tar_at_far_exact": {f"{r['far']:g}": r["tar"] for r in exact},
              "identification": identification}
    return result, skipped, scores, genuine


def format_result(result, skipped):
    """The human-readable table of an `evaluate` result."""
    lines = [f"{result['target']}: {result['images']} crops, {result['templates']} templates, {result['pairs']} pairs "
             f"({result['genuine']} genuine), mode {result['mode']}"]
    fars = list(result["tar_at_far"])
    lines.append("1:1 TAR@FAR       " + "".join(f"{far:>10}" for far in fars))
    for label, key in (("nearest ROC point", "tar_at_far"), ("exact (FAR <= f)", "tar_at_far_exact")):
        lines.append(f"  {label:<16}" + "".join(f"{100 * result[key][far]:>10.2f}" for far in fars))
    lines += [f"  skipped {s['reason']}" for s in skipped]
    if result["identification"]:
        mean = result["identification"]["mean"]
        columns = [f"rank-{k}" for k in mean["rank"]] + [f"TPIR@{f}" for f in mean["tpir_at_fpir"]]
        lines.append("1:N               " + "".join(f"{c:>10}" for c in columns))
        for name, r in result["identification"].items():
            values = list(r["rank"].values()) + [r["tpir_at_fpir"].get(f, float("nan")) for f in mean["tpir_at_fpir"]]
            lines.append(f"  {name:<16}" + "".join(f"{100 * v:>10.2f}" for v in values))
    return "\n".join(lines)
