"""Synthetic face-like identities, so the whole pipeline runs without downloading a face data set.

Each identity is a fixed random draw of traits (face oval and jaw, skin tone, skin texture, hair colour and style,
eye spacing/size/colour/tilt, brows, nose, mouth geometry and lip colour, moles, glasses, beard). Each image then
varies what is not identity: pose (in-plane rotation, yaw-like squash and feature shift, pitch), scale,
translation, expression (smile, open mouth, blink), background, lighting (gain, directional gradient, colour
cast), blur, noise and occlusion. ``difficulty`` scales all of the per-image variation (0 = identical images).

Every image is drawn from its own RNG seeded by ``(seed, identity, index)``, so results are the same in any
order, on any number of workers. Faces are drawn roughly on the ArcFace 112x112 alignment template, as aligned
real data would be.
"""
import functools
import os
import re

import numpy as np

from vargface.data.images import encode_jpeg
from vargface.errors import VargfaceError

HAIR = np.array([[20, 20, 25], [30, 45, 70], [40, 70, 120], [90, 140, 200], [40, 60, 150], [170, 170, 175],
                 [60, 60, 60]], np.float64)  # BGR: black, dark brown, brown, blond, red, grey, dark grey
IRIS = np.array([[30, 50, 80], [140, 100, 40], [80, 120, 60], [50, 40, 30], [120, 110, 90]], np.float64)
FOLDER_FORMAT = "id_{:06d}"
FOLDERS = re.compile(r"id_\d{6,}")  # the names FOLDER_FORMAT gives


@functools.lru_cache(maxsize=1024)  # read-only; images of one identity are rendered together
def _identity_traits(seed, identity, size):
    r = np.random.default_rng([seed, 0, identity])
    t = r.uniform()
    skin = (1 - t) * np.array([185, 205, 240]) + t * np.array([55, 80, 120]) + r.normal(0, 10, 3)
    hair = HAIR[r.integers(len(HAIR))] + r.normal(0, 12, 3)
    grid = int(r.integers(3, 7))
    import cv2

    texture = cv2.resize(r.normal(0, 1, (grid, grid)).astype(np.float32), (size, size),
                         interpolation=cv2.INTER_CUBIC)
    tint = (1 + 0.15 * r.normal(0, 1, 3)).astype(np.float32)
    return dict(
        skin=skin, hair=hair, hair_style=int(r.integers(4)), hairline=r.uniform(0.16, 0.30),
        face_c=(0.5 + r.normal(0, 0.012), 0.53 + r.normal(0, 0.015)), face_ax=(r.uniform(0.28, 0.38),
                                                                              r.uniform(0.40, 0.50)),
        jaw=r.uniform(-0.25, 0.45), texture=np.round(texture[..., None] * (tint * r.uniform(4, 18))).astype(np.int16),
        eye_y=0.46 + r.normal(0, 0.02), eye_dx=r.uniform(0.13, 0.18), eye_ax=(r.uniform(0.04, 0.065),
                                                                             r.uniform(0.016, 0.03)),
        iris=IRIS[r.integers(len(IRIS))] + r.normal(0, 10, 3), eye_tilt=r.uniform(-10, 10),
        brow_dy=r.uniform(0.05, 0.09), brow_len=r.uniform(0.07, 0.12), brow_w=r.uniform(0.010, 0.028),
        brow_tilt=r.uniform(-14, 14), brow_arch=r.uniform(-0.01, 0.025),
        nose_len=r.uniform(0.09, 0.17), nose_w=r.uniform(0.035, 0.075), nose_tip=r.uniform(0.012, 0.03),
        mouth_y=r.uniform(0.78, 0.86), mouth_w=r.uniform(0.08, 0.14), lip_w=r.uniform(0.008, 0.028),
        smile=r.uniform(-0.025, 0.035), lip=np.array([r.uniform(60, 130), r.uniform(50, 110),
                                                      r.uniform(140, 210)]),
        moles=r.uniform([0.25, 0.35], [0.75, 0.85], (int(r.integers(0, 4)), 2)),
        mole_r=r.uniform(0.006, 0.014), glasses=r.uniform() < 0.15, glasses_col=r.uniform(0, 120, 3),
        beard=r.uniform() < 0.18, ear=r.uniform(0.03, 0.06),
    )


@functools.lru_cache(maxsize=8)
def _fields(size):
    """Fixed per-size fields: horizontal and vertical ramps (lighting gradients) and a noise bank that each image
    crops at a random offset (cheaper than fresh Gaussian noise, and as good for this purpose)."""
    ramp = np.ascontiguousarray(np.broadcast_to((np.arange(size, dtype=np.float32) / size - 0.5), (size, size)))
    noise = np.random.default_rng(size).standard_normal((2 * size, 2 * size)).astype(np.float32)
    return ramp, np.ascontiguousarray(ramp.T), noise


def _color(c):
    return tuple(min(max(float(v), 0.0), 255.0) for v in c)


@functools.lru_cache(maxsize=1)
def _unit_circle():
    import cv2

    return cv2.ellipse2Poly((0, 0), (1000, 1000), 0, 0, 360, 8).astype(np.float64) / 1000


def render(seed, identity, index, size=112, difficulty=1.0, traits=None):
    """One synthetic face: HWC uint8 **BGR** image (OpenCV order, ready for ``cv2.imencode``)."""
    import cv2

    tr = traits or _identity_traits(seed, identity, size)
    r = np.random.default_rng([seed, 1, identity, index])
    d = float(difficulty)
    draws = iter(r.uniform(-d, d, 24).tolist())
    u = lambda scale: next(draws) * scale  # noqa: E731  symmetric per-image variation
    S = 16  # cv2 fixed-point shift 4: sub-pixel geometry
    px = lambda x, y: (int(round(x * size * S)), int(round(y * size * S)))  # noqa: E731

    col = _color
    bg = 127.5 + r.uniform(-97.5, 97.5, 3) * d
    img = np.empty((size, size, 3), np.uint8)
    cv2.rectangle(img, (0, 0), (size, size), col(bg), -1)
    yaw, pitch = u(1.0), u(0.025)
    cx, cy = tr["face_c"]
    ax, ay = tr["face_ax"]
    ax *= 1 - 0.12 * abs(yaw)
    fx = cx + 0.05 * yaw  # interior features move with the head turn
    skin, hair = tr["skin"], tr["hair"]
    line = cv2.LINE_AA

    # hair behind the face (long styles), ears, face oval with jaw shaping
    if tr["hair_style"] == 1:
        cv2.ellipse(img, px(cx, cy - 0.02), px(ax * 1.25, ay * 1.05), 0, 0, 360, col(hair), -1, line, 4)
    for side in (-1, 1):
        ex = cx + side * ax * (1 - 0.25 * side * yaw)
        cv2.ellipse(img, px(ex, tr["eye_y"] + 0.08 + pitch), px(tr["ear"], tr["ear"] * 1.6), 0, 0, 360,
                    col(skin * 0.92), -1, line, 4)
    oval = _unit_circle()
    below = np.clip(oval[:, 1], 0, None)
    xs = cx + oval[:, 0] * ax * (1 - tr["jaw"] * below ** 2)
    ys = cy + oval[:, 1] * ay
    poly = np.stack([xs, ys], 1) * size * S
    cv2.fillPoly(img, [poly.astype(np.int32)], col(skin), line, 4)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [poly.astype(np.int32)], 1, cv2.LINE_8, 4)
    if tr["beard"]:
        cv2.ellipse(img, px(fx, cy + ay * 0.55), px(ax * 0.75, ay * 0.42), 0, 0, 180, col(hair * 0.8), -1, line, 4)
    # hair on top
    top = cy - ay
    if tr["hair_style"] != 2:
        cv2.ellipse(img, px(cx, top + tr["hairline"]), px(ax * 1.05, tr["hairline"] + 0.04), 0, 180, 360,
                    col(hair), -1, line, 4)
        if tr["hair_style"] == 3:  # fringe
            cv2.ellipse(img, px(cx + 0.05, top + tr["hairline"]), px(ax * 0.8, 0.06), 10, 0, 180, col(hair), -1,
                        line, 4)
    # eyes and brows
    blink = r.uniform() < 0.08 * d
    eyes = []
    for side in (-1, 1):
        spread = tr["eye_dx"] * (1 + 0.25 * side * yaw)
        ex, ey = fx + side * spread, tr["eye_y"] + pitch
        eyes.append((ex, ey))
        eax, eay = tr["eye_ax"]
        eax *= 1 + 0.2 * side * yaw
        tilt = side * tr["eye_tilt"]
        if blink:
            cv2.ellipse(img, px(ex, ey), px(eax, 0.004), tilt, 0, 360, col(skin * 0.5), -1, line, 4)
        else:
            cv2.ellipse(img, px(ex, ey), px(eax, eay), tilt, 0, 360, (235, 235, 235), -1, line, 4)
            g = u(0.3) * eax
            cv2.circle(img, px(ex + g, ey), int(eay * 0.95 * size * S), col(tr["iris"]), -1, line, 4)
            cv2.circle(img, px(ex + g, ey), int(eay * 0.45 * size * S), (15, 15, 15), -1, line, 4)
        by = ey - tr["brow_dy"] + u(0.01)
        bl = tr["brow_len"] * (1 + 0.2 * side * yaw)
        a = np.deg2rad(side * tr["brow_tilt"])
        p0 = (ex - side * bl * 0.4, by + tr["brow_arch"])
        p1 = (ex + bl * 0.1 * side, by)
        p2 = (ex + side * bl * 0.6 * np.cos(a), by + bl * 0.6 * np.sin(a) + tr["brow_arch"] * 0.5)
        pts = np.array([px(*p0), px(*p1), px(*p2)], np.int32)
        cv2.polylines(img, [pts], False, col(hair * 0.8), max(1, int(round(tr["brow_w"] * size))), line, 4)
        if tr["glasses"]:
            cv2.circle(img, px(ex, ey), int(0.075 * size * S), col(tr["glasses_col"]), max(1, size // 56), line, 4)
    if tr["glasses"]:
        cv2.line(img, px(eyes[0][0] + 0.075, eyes[0][1]), px(eyes[1][0] - 0.075, eyes[1][1]),
                 col(tr["glasses_col"]), max(1, size // 56), line, 4)
    # nose
    ny = tr["eye_y"] + pitch * 1.3
    tip = (fx + 0.03 * yaw, ny + tr["nose_len"] + 0.04)
    nose = np.array([px(fx, ny + 0.02), px(tip[0] - tr["nose_w"], tip[1]), px(tip[0] + tr["nose_w"], tip[1])],
                    np.int32)
    cv2.fillPoly(img, [nose], col(skin * 0.82), line, 4)
    cv2.circle(img, px(*tip), int(tr["nose_tip"] * size * S), col(skin * 0.7), -1, line, 4)
    # mouth: geometry from identity, expression per image
    my = tr["mouth_y"] + pitch * 1.5
    mw = tr["mouth_w"] * (1 - 0.1 * abs(yaw))
    smile = tr["smile"] + u(0.02)
    mx_ = fx + 0.02 * yaw
    mouth = np.array([px(mx_ - mw, my - smile), px(mx_, my + smile * 0.6), px(mx_ + mw, my - smile)], np.int32)
    if r.uniform() < 0.15 * d:
        cv2.ellipse(img, px(mx_, my), px(mw * 0.7, 0.02 + r.uniform(0, 0.02)), 0, 0, 360, (30, 20, 40), -1, line, 4)
    cv2.polylines(img, [mouth], False, col(tr["lip"]), max(1, int(round(tr["lip_w"] * size))), line, 4)
    for mole in tr["moles"]:
        cv2.circle(img, px(mole[0] + 0.04 * yaw, mole[1]), max(1, int(tr["mole_r"] * size * S)), col(skin * 0.45),
                   -1, line, 4)

    # identity skin texture on the face region, then pose / scale / translation in one affine warp
    cv2.add(img, tr["texture"], dst=img, mask=mask, dtype=cv2.CV_8U)
    angle, scale = u(15.0), 1 + u(0.10)
    m = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
    m[:, 2] += np.array([u(0.05), u(0.05)]) * size
    f = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    f = f.astype(np.float32)
    # occlusion (a hand / object)
    if r.uniform() < 0.12 * d:
        w, h = r.uniform(0.2, 0.45, 2) * size
        x0, y0 = r.uniform(0, size - w), r.uniform(size * 0.3, size - h)
        cv2.rectangle(f, (int(x0), int(y0)), (int(x0 + w), int(y0 + h)), col(r.uniform(0, 255, 3)), -1)
    # lighting: gain, colour cast, directional gradient; then blur and sensor noise
    rx, ry, bank = _fields(size)
    theta, strength = r.uniform(0, 2 * np.pi), u(0.5)
    gain = cv2.addWeighted(rx, strength * np.cos(theta), ry, strength * np.sin(theta), 1.0)
    cast = (1 + u(0.3)) * (1 + r.normal(0, 0.06 * d, 3))
    f = cv2.multiply(f, cv2.merge([gain * float(c) for c in cast]))
    sigma = r.uniform(0, 1.3) * d * size / 112
    if sigma > 0.3:
        f = cv2.GaussianBlur(f, (0, 0), sigma)
    noise = r.uniform(0, 7) * d
    if noise > 0:
        oy, ox = r.integers(0, size, 2)
        grain = np.ascontiguousarray(bank[oy:oy + size, ox:ox + size])
        f = cv2.scaleAdd(cv2.merge([grain, grain, grain]), noise, f)
    return cv2.add(f, 0.0, dtype=cv2.CV_8U)  # saturating cast to uint8


def _jobs(identities, per_identity, first_identity):
    return [(first_identity + label, label, j) for label in range(identities) for j in range(per_identity)]


def _check_counts(identities, per_identity, size):
    if int(identities) < 1 or int(per_identity) < 1:
        raise VargfaceError(f"--identities and --per-identity must be >= 1 (got {identities}, {per_identity})")
    if int(size) < 16:
        raise VargfaceError(f"--size {size}: too small to draw a face; use >= 16 (112 is the ArcFace size)")


def _render_jpeg(job, seed, size, difficulty, quality):
    ident, label, j = job
    return label, encode_jpeg(render(seed, ident, j, size, difficulty), quality)


def _render_file(job, root, **render_options):
    ident, _, j = job
    with open(os.path.join(root, FOLDER_FORMAT.format(ident), f"{j:04d}.jpg"), "wb") as f:
        f.write(_render_jpeg(job, **render_options)[1])


def make_synthetic(out_dir, identities, per_identity, size=112, seed=0, difficulty=1.0, first_identity=0,
                   quality=95, workers=None, overwrite=False, progress=True):
    """Write ``OUT_DIR/id_NNNNNN/NNNN.jpg``: one folder per identity, ``per_identity`` JPEGs each. Identity
    numbers start at ``first_identity`` (use distinct ranges, or seeds, for held-out identities).
    Returns the number of images."""
    from vargface.options import progress_bar
    from vargface.atomic import atomic_dir
    from vargface.data.parallel import imap_processes

    _check_counts(identities, per_identity, size)
    jobs = _jobs(identities, per_identity, first_identity)
    with atomic_dir(out_dir, overwrite=overwrite, own=FOLDERS) as tmp:
        for ident in range(first_identity, first_identity + identities):
            os.makedirs(os.path.join(tmp, FOLDER_FORMAT.format(ident)))
        one = functools.partial(_render_file, root=tmp, seed=seed, size=size, difficulty=difficulty, quality=quality)
        for _ in progress_bar(imap_processes(one, jobs, workers), total=len(jobs), desc="synth", unit="img",
                      enabled=progress):
            pass
    return len(jobs)


def synthetic_samples(identities, per_identity, size=112, seed=0, difficulty=1.0, first_identity=0, quality=95,
                      workers=None):
    """Yield ``(label, jpeg_bytes)`` in identity order (labels 0..identities-1), rendered in worker processes."""
    from vargface.data.parallel import imap_processes

    _check_counts(identities, per_identity, size)
    one = functools.partial(_render_jpeg, seed=seed, size=size, difficulty=difficulty, quality=quality)
    return imap_processes(one, _jobs(identities, per_identity, first_identity), workers)


def make_synthetic_rec(out_dir, identities, per_identity, size=112, seed=0, difficulty=1.0, first_identity=0,
                       quality=95, workers=None, overwrite=False, progress=True):
    """Render identities straight into ``OUT_DIR/train.rec``, ``train.idx``, ``property`` (no image folders).
    Returns ``(num_images, num_classes)``."""
    from vargface.data.recordio import write_rec

    samples = synthetic_samples(identities, per_identity, size, seed, difficulty, first_identity, quality, workers)
    return write_rec(out_dir, samples, image_size=(size, size), num_classes=identities, overwrite=overwrite,
                     total=identities * per_identity, progress=progress, desc="synth rec")
