"""Image decode/encode and 5-point face alignment to the ArcFace 112x112 template."""
import numpy as np

from vargface.errors import VargfaceError

# Eye centres, nose tip, mouth corners of the standard ArcFace crop (x, y), for a 112x112 image.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_KEEP_AS_IS = (b"\xff\xd8", b"\x89PNG")  # JPEG/PNG bytes go into a .rec unchanged when no resize is needed


def decode(buf, what):
    """Encoded bytes -> HWC uint8 BGR; a clear error naming ``what`` when the bytes are not an image."""
    import cv2

    image = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR) if len(buf) else None
    if image is None:
        raise VargfaceError(f"{what}: does not decode as an image ({len(buf)} bytes)")
    return image


def resize(image, size):
    """Resize HWC to ``size=(h, w)`` if it differs: INTER_AREA when shrinking (no aliasing), LINEAR otherwise."""
    import cv2

    height, width = size
    if image.shape[:2] == (height, width):
        return image
    shrink = height < image.shape[0] or width < image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def decode_rgb(buf, size, what):
    """Encoded bytes -> HWC uint8 RGB at ``size`` (h, w), or at the image's own size when ``size`` is None."""
    image = decode(buf, what)
    return np.ascontiguousarray((image if size is None else resize(image, size))[..., ::-1])


def encode_jpeg(image, quality=95):
    import cv2

    ok, out = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise VargfaceError("JPEG encoding failed")
    return out.tobytes()


def similarity_transform(src, dst):
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` points onto ``dst``
    (Umeyama 1991): a 2x3 matrix for ``cv2.warpAffine``."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ sign @ vt
    scale = np.trace(np.diag(sig) @ sign) / s.var(0).sum()
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def align(image, landmarks, size=(112, 112)):
    """Warp a face so its 5 landmarks (eyes, nose, mouth corners; (5, 2) x, y) land on the ArcFace template,
    scaled to ``size``."""
    import cv2

    height, width = size
    template = ARCFACE_TEMPLATE * np.array([width / 112.0, height / 112.0])
    m = similarity_transform(np.asarray(landmarks, np.float64).reshape(5, 2), template)
    return cv2.warpAffine(image, m, (width, height), flags=cv2.INTER_LINEAR, borderValue=0)


def crop_bbox(image, bbox, size, margin=44):
    """Crop ``bbox`` (x1, y1, x2, y2) with ``margin`` pixels in total (as InsightFace's preprocessing does for
    faces without landmarks) and resize to ``size``."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (int(v) for v in bbox)
    x1, y1 = max(x1 - margin // 2, 0), max(y1 - margin // 2, 0)
    x2, y2 = min(x2 + margin // 2, w), min(y2 + margin // 2, h)
    if x2 <= x1 or y2 <= y1:
        raise VargfaceError(f"bounding box {list(bbox)} is empty inside a {w}x{h} image")
    return resize(image[y1:y2, x1:x2], size)


def prepare(buf, size, quality, what, landmarks=None, bbox=None):
    """Encoded input -> bytes to store: aligned by landmarks, else cropped by bbox, else resized; unchanged
    when it is already a JPEG/PNG of the right size (lossless, like face2rec for aligned images)."""
    image = decode(buf, what)
    if landmarks is not None:
        return encode_jpeg(align(image, landmarks, size), quality)
    if bbox is not None:
        return encode_jpeg(crop_bbox(image, bbox, size), quality)
    if image.shape[:2] == tuple(size) and bytes(buf[:4]).startswith(_KEEP_AS_IS):
        return bytes(buf)
    return encode_jpeg(resize(image, size), quality)
