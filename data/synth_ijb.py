"""A synthetic IJB-B/IJB-C-layout fixture, so `vargface ijb` runs (and is tested) without the licensed data.

Subjects are `vargface.data.synth` identities. Each subject has a number of templates of 1-3 media of 1-3 frames;
each frame is a loose crop: a rendered aligned face placed by a random similarity (rotation, scale, shift) in a
larger canvas, with its 5 landmarks (the ArcFace template points under that transform) and a faceness score. The
pair list holds every genuine template pair and impostor pairs; the 1:N files split the subjects into two
galleries of one template each (G1, G2; S1, S2 for IJB-B), every other template being a mixed probe. The files are
named and formatted as InsightFace distributes IJB's meta files (docs/formats.md)."""
import functools
import os
import re

import numpy as np

from vargface.errors import VargfaceError

OWN = re.compile("loose_crop|meta")  # what the fixture folder holds: --overwrite replaces it, and nothing else
FRAMES = (1, 3)  # frames per media and media per template: 1..3, as the protocol's templates mix photos and videos


def _crop(job, seed, difficulty, quality):
    """One loose crop: (JPEG bytes, (5, 2) landmarks in crop pixels)."""
    import cv2

    from vargface.data.images import ARCFACE_TEMPLATE, encode_jpeg
    from vargface.data.synth import render

    identity, index = job
    face = render(seed, identity, index, 112, difficulty)
    r = np.random.default_rng([seed, 3, identity, index])
    side = int(r.integers(128, 200))
    angle, scale = np.deg2rad(r.uniform(-25, 25)), r.uniform(0.9, 1.4)
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = side / 2 + r.uniform(-0.08, 0.08, 2) * side
    m = np.hstack([rotation, (centre - rotation @ np.array([56.0, 56.0]))[:, None]])
    crop = cv2.warpAffine(face, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    marks = ARCFACE_TEMPLATE @ m[:, :2].T + m[:, 2]
    return encode_jpeg(crop, quality), marks


def plan(subjects, templates_per_subject, pairs=None, seed=0):
    """The fixture's structure, without images: per crop (subject, template, media), per template its subject, the
    pair list (t1, t2, genuine) and the two galleries (template lists: the first template of each even, odd
    subject)."""
    if subjects < 2 or templates_per_subject < 2:
        raise VargfaceError(f"--subjects {subjects}, --templates-per-subject {templates_per_subject}: expected at "
                            f"least 2 of each (impostor pairs need two subjects, 1:N a gallery and a probe template)")
    r = np.random.default_rng([seed, 2])
    crops, template_subject, media = [], [], 0
    for subject in range(subjects):
        for _ in range(templates_per_subject):
            template = len(template_subject) + 1
            template_subject.append(subject)
            for _ in range(int(r.integers(FRAMES[0], FRAMES[1] + 1))):
                media += 1
                crops += [(subject, template, media)] * int(r.integers(FRAMES[0], FRAMES[1] + 1))
    template_subject = np.array(template_subject)
    n = len(template_subject)
    first, second = np.triu_indices(n, 1)
    same = template_subject[first] == template_subject[second]
    genuine = np.stack([first[same], second[same]], 1)
    impostors = np.stack([first[~same], second[~same]], 1)
    if pairs is not None:
        if pairs <= len(genuine):
            raise VargfaceError(f"--pairs {pairs}: the fixture has {len(genuine)} genuine template pairs; ask for "
                                f"more pairs than that, so that there are impostor pairs too")
        keep = min(pairs - len(genuine), len(impostors))
        impostors = impostors[np.sort(r.choice(len(impostors), keep, replace=False))]
    table = np.concatenate([np.c_[genuine + 1, np.ones(len(genuine), int)],
                            np.c_[impostors + 1, np.zeros(len(impostors), int)]])
    table = table[r.permutation(len(table))]
    gallery = [[t for t in range(1, n + 1) if template_subject[t - 1] % 2 == parity
                and (t - 1) % templates_per_subject == 0] for parity in (0, 1)]
    return crops, template_subject, table, gallery


def make_synthetic_ijb(out_dir, target="IJBC", subjects=8, templates_per_subject=3, pairs=None, seed=0,
                       difficulty=1.0, first_identity=0, quality=95, workers=None, overwrite=False, progress=True):
    """Write the fixture to ``out_dir`` (loose_crop/, meta/); returns a summary dict."""
    from vargface.atomic import atomic_dir
    from vargface.data.ijb_layout import Layout, target_key
    from vargface.data.parallel import imap_processes
    from vargface.options import progress_bar

    key = target_key(target)
    crops, template_subject, table, gallery = plan(subjects, templates_per_subject, pairs, seed)
    faceness = np.random.default_rng([seed, 4]).uniform(0.5, 1.0, len(crops))
    counts = {}
    jobs = []
    for subject, _, _ in crops:  # each subject's crops are images 0, 1, 2, ... of its synthetic identity
        jobs.append((first_identity + subject, counts.get(subject, 0)))
        counts[subject] = counts.get(subject, 0) + 1
    names = [f"{i + 1}.jpg" for i in range(len(crops))]
    render = functools.partial(_crop, seed=seed, difficulty=difficulty, quality=quality)
    with atomic_dir(out_dir, overwrite=overwrite, own=OWN) as tmp:  # locked while written
        files = Layout(tmp, key)
        os.makedirs(files.crops)
        os.makedirs(files.meta)
        lines = []
        for name, score, (jpeg, marks) in zip(names, faceness, progress_bar(
                imap_processes(render, jobs, workers), total=len(jobs), desc="synth-ijb", unit="crop",
                enabled=progress)):
            with open(os.path.join(files.crops, name), "wb") as handle:
                handle.write(jpeg)
            lines.append(" ".join([name] + [f"{v:.3f}" for v in marks.reshape(-1)] + [f"{score:.6f}"]))
        _write_lines(files.images, lines)
        _write_lines(files.templates,
                     [f"{name} {template} {media}" for name, (_, template, media) in zip(names, crops)])
        _write_lines(files.pairs, [f"{a} {b} {label}" for a, b, label in table])
        for index, templates in enumerate(gallery, 1):
            _write_csv(files.gallery(index), set(templates), crops, names)
        in_gallery = {t for templates in gallery for t in templates}
        _write_csv(files.probes, set(range(1, len(template_subject) + 1)) - in_gallery, crops, names)
    return {"out": os.fspath(out_dir), "target": key, "crops": len(crops), "templates": len(template_subject),
            "subjects": subjects, "pairs": len(table), "genuine": int(table[:, 2].sum())}


def _write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))


def _write_csv(path, templates, crops, names):
    """One row per image of the chosen templates, as IJB's 1:N files: TEMPLATE_ID,SUBJECT_ID,FILENAME."""
    rows = ["TEMPLATE_ID,SUBJECT_ID,FILENAME"]
    rows += [f"{template},{subject + 1},{name}" for name, (subject, template, _) in zip(names, crops)
             if template in templates]
    _write_lines(path, rows)
