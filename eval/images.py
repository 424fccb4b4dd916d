"""Decoding face images for the networks: encoded bytes or files -> uint8 RGB NHWC, resized to the input side.

The networks take RGB 0..255 float32 NCHW and normalise inside, so no mean/std is applied here."""
import cv2
import numpy as np

from vargface.errors import VargfaceError


def decode_image(buf, name, size=None):
    """Decode encoded image bytes to uint8 RGB (H, W, 3), resized to ``size`` x ``size`` when given and different.

    ``name`` says where the bytes came from (file, or .bin item) so a bad one can be found."""
    array = np.frombuffer(bytes(buf), dtype=np.uint8)
    image = cv2.imdecode(array, cv2.IMREAD_COLOR) if array.size else None
    if image is None:
        raise VargfaceError(f"{name}: cannot decode the image (expected JPEG/PNG bytes of an aligned face)")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if size and image.shape[:2] != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    return image


def read_image(path, size=None):
    """Read one image file as uint8 RGB (H, W, 3); a missing or undecodable file is a VargfaceError naming it."""
    try:
        with open(path, "rb") as handle:
            buf = handle.read()
    except OSError as error:
        raise VargfaceError(f"{path}: cannot read the image ({error.strerror})") from None
    return decode_image(buf, path, size)


def read_images(paths, size=None):
    """Read image files into one uint8 RGB NHWC array (all resized to ``size``; they must agree if it is None)."""
    images = [read_image(path, size) for path in paths]
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise VargfaceError(f"images differ in size ({sorted(shapes)}); pass a size to resize them")
    return np.stack(images) if images else np.zeros((0, size or 112, size or 112, 3), np.uint8)


def to_nchw(images):
    """uint8/float NHWC RGB -> float32 NCHW RGB 0..255, the networks' input."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[3] != 3:
        raise VargfaceError(f"images: expected an (N, H, W, 3) RGB array, got shape {images.shape}")
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
