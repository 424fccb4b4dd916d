"""Face image files for the networks: file -> uint8 RGB HWC at the input side; NHWC -> the NCHW float32 input.

Decoding itself is vargface.data.images' (cv2, BGR->RGB, resize); the networks normalise inside, so no mean/std
is applied here."""
import numpy as np

from vargface.errors import VargfaceError


def read_image(path, size=None):
    """Read one aligned face as uint8 RGB (size, size, 3), or at its own side when ``size`` is None (the inference
    runner then resizes it by its one rule); a missing or undecodable file is an error naming it."""
    from vargface.data.images import decode_rgb

    try:
        with open(path, "rb") as handle:
            buf = handle.read()
    except OSError as error:
        raise VargfaceError(f"{path}: cannot read the image ({error.strerror})") from None
    return decode_rgb(buf, None if size is None else (size, size), path)


def read_images(paths, size=None, workers=None, ahead=64):
    """`read_image` of each path, in order, decoded by threads (OpenCV releases the GIL) while the caller embeds
    the images before: at most ``ahead`` images are decoded in advance, so memory stays bounded."""
    import functools

    from vargface.data.parallel import imap_ordered

    return imap_ordered(functools.partial(read_image, size=size), paths, workers, ahead)


def to_nchw(images):
    """uint8/float NHWC RGB -> float32 NCHW RGB 0..255, the networks' input."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[3] != 3:
        raise VargfaceError(f"images: expected an (N, H, W, 3) RGB array, got shape {images.shape}")
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)


def to_input(images, side):
    """RGB images (an (N, H, W, 3) array or a list of (H, W, 3), any side) -> float32 NCHW at ``side``.

    The one resize rule of inference (evaluation, the distillation teacher, verification packs):
    `vargface.data.images.resize` on float32 pixels, so every path sees the same pixels for the same image."""
    from vargface.data.images import resize

    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = images[None]
    ready = []
    for image in images:
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 3 or image.shape[2] != 3:
            raise VargfaceError(f"images: expected (H, W, 3) RGB images, got one of shape {image.shape}")
        ready.append(resize(image, (side, side)))
    if not ready:
        return np.zeros((0, 3, side, side), np.float32)
    return to_nchw(np.stack(ready))
