"""Face image files for the networks: file -> uint8 RGB HWC at the input side; NHWC -> the NCHW float32 input.

Decoding itself is vargface.data.images' (cv2, BGR->RGB, resize); the networks normalise inside, so no mean/std
is applied here."""
import numpy as np

from vargface.errors import VargfaceError


def read_image(path, size=None):
    """Read one aligned face as uint8 RGB (size, size, 3), or at its own side when ``size`` is None (the inference
    runner then resizes it by its one rule); a missing or undecodable file is an error naming it."""
    from vargface.data.images import decode, decode_rgb

    try:
        with open(path, "rb") as handle:
            buf = handle.read()
    except OSError as error:
        raise VargfaceError(f"{path}: cannot read the image ({error.strerror})") from None
    if size is None:
        return np.ascontiguousarray(decode(buf, path)[..., ::-1])
    return decode_rgb(buf, (size, size), path)


def to_nchw(images):
    """uint8/float NHWC RGB -> float32 NCHW RGB 0..255, the networks' input."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[3] != 3:
        raise VargfaceError(f"images: expected an (N, H, W, 3) RGB array, got shape {images.shape}")
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
