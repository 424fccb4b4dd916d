"""``FaceRecordIter``: a fast, deterministic ``mx.io.DataIter`` over an InsightFace .rec.

Drop-in for InsightFace's ``FaceImageIter`` (same keyword names), with:
- each batch decoded by several threads (``cv2.imdecode`` releases the GIL), a few batches ahead of the trainer:
  host memory stays about ``prefetch + 1`` batches whatever the number of cores, and the batch's NDArray
  (pinned memory with ``pinned=True``, for fast copies to GPUs) is made in a worker thread, not the trainer's;
- every random choice (epoch order, mirror, cutoff, colour jitter) drawn from ``(seed, epoch)`` or
  ``(seed, epoch, record)``, so an epoch is reproducible and a resumed run sees exactly the same batches:
  ``set_epoch(epoch, start_batch=k)`` jumps to batch k without decoding the skipped images;
- sharding: with the same seed every part computes the same epoch order and takes every ``num_parts``-th
  sample from ``part_index`` (disjoint parts that together cover the data set);
- ``batch.index`` (record keys) and ``batch.mirrored`` on each DataBatch, for teacher-embedding caches, and
  ``batch.host_label`` (the labels as NumPy), for what samples on the host (the sharded classifier).

Images are NCHW float32 RGB in 0..255 (networks normalise inside). When ``data_shape`` differs from the stored
image size, decoded images are resized to it (``cv2.INTER_AREA`` when shrinking, e.g. 112 records read at 56);
pass ``resize=False`` to make a size mismatch an error instead.
"""
import collections
import os
from concurrent.futures import ThreadPoolExecutor, wait

import mxnet as mx
import numpy as np

from vargface.data.images import resize as resize_image
from vargface.data.parallel import default_workers
from vargface.data.recordio import RecReader, read_property
from vargface.errors import VargfaceError, last_line

_GRAY = np.array([0.299, 0.587, 0.114], np.float32)  # RGB luma weights
# Batches decoded ahead of the consumer: enough to hide a slow batch, few enough that a batch of 1024 faces
# (154 MB at 112x112 in float32) times the prefetch stays a small share of a host's memory.
PREFETCH = 3


class FaceRecordIter(mx.io.DataIter):
    """Batches of ``data`` (B, 3, H, W) and ``softmax_label`` (B,) from ``path_imgrec`` (a .rec path or a data
    directory holding train.rec). ``last_batch``: ``'discard'`` (default, for training; every part then yields the
    same number of batches, as dist_sync needs) or ``'pad'`` (the last batch is completed with samples from the
    start of the epoch and ``batch.pad`` counts them, as MXNet iterators do)."""

    def __init__(self, batch_size, data_shape=(3, 112, 112), path_imgrec=None, shuffle=False, aug_list=None,
                 mean=None, rand_mirror=False, cutoff=0, color_jittering=0, images_filter=0, data_name="data",
                 label_name="softmax_label", seed=0, part_index=0, num_parts=1, last_batch="discard",
                 num_workers=None, prefetch=None, resize=True, epoch=0, pinned=False):
        super().__init__(int(batch_size))
        if path_imgrec is None:
            raise VargfaceError("FaceRecordIter: path_imgrec is required (a .rec file or a data directory)")
        if aug_list is not None:
            raise VargfaceError("FaceRecordIter: aug_list is not supported; use rand_mirror, cutoff, color_jittering")
        if len(data_shape) != 3 or data_shape[0] != 3:
            raise VargfaceError(f"FaceRecordIter: data_shape {tuple(data_shape)} must be (3, height, width)")
        if not 0 <= part_index < num_parts:
            raise VargfaceError(f"FaceRecordIter: part_index {part_index} must be in [0, num_parts={num_parts})")
        if last_batch not in ("discard", "pad"):
            raise VargfaceError(f"FaceRecordIter: last_batch {last_batch!r} must be 'discard' or 'pad'")
        self.data_shape = tuple(int(v) for v in data_shape)
        self.shuffle, self.rand_mirror, self.seed = bool(shuffle), bool(rand_mirror), int(seed)
        self.cutoff, self.color_jittering = int(cutoff), int(color_jittering)
        self.part_index, self.num_parts, self.last_batch = int(part_index), int(num_parts), last_batch
        self.resize = bool(resize)
        self.mean = None if mean is None else np.asarray(mean, np.float32).reshape(3, 1, 1)
        self.reader = RecReader(path_imgrec)
        self.path_imgrec = self.reader.rec_path
        self.num_classes = None
        if os.path.isfile(os.path.join(self.reader.data_dir, "property")):
            self.num_classes = read_property(self.reader.data_dir)[0]
        keys = self.reader.imgidx
        if images_filter > 0:
            if not self.reader.has_header:
                raise VargfaceError(f"{self.path_imgrec}: images_filter needs identity records; the file has no "
                                    "header")
            keys = np.concatenate([np.arange(a, b) for a, b in self.reader.load_id_ranges() if b - a >= images_filter]
                                  or [np.zeros(0, np.int64)])
        self.keys = np.asarray(keys, np.int64)
        self.num_samples = len(self.keys[self.part_index::self.num_parts])
        if self.last_batch == "discard":
            self.num_batches = (len(self.keys) // self.num_parts) // self.batch_size
        else:
            self.num_batches = -(-self.num_samples // self.batch_size)
        if self.num_batches == 0:
            raise VargfaceError(f"{self.path_imgrec}: {self.num_samples} images in part {self.part_index}/"
                                f"{self.num_parts} are fewer than one batch of {self.batch_size}")
        self.provide_data = [mx.io.DataDesc(data_name, (self.batch_size,) + self.data_shape)]
        self.provide_label = [mx.io.DataDesc(label_name, (self.batch_size,))]
        self.workers = int(num_workers or default_workers())
        self.prefetch = int(prefetch or PREFETCH)
        self.context = mx.cpu_pinned() if pinned else mx.cpu()
        # one pool assembles whole batches (at most `prefetch` at a time), the other decodes their images
        self._batches = ThreadPoolExecutor(self.prefetch, thread_name_prefix="FaceRecordIter-batch")
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="FaceRecordIter")
        self._pending = collections.deque()
        self.set_epoch(epoch)

    # ---- position -------------------------------------------------------------------------------------------
    def set_epoch(self, epoch, start_batch=0):
        """Go to batch ``start_batch`` of ``epoch`` (order and augmentation depend only on seed and epoch)."""
        if not 0 <= start_batch <= self.num_batches:
            raise VargfaceError(f"start_batch {start_batch} is outside the epoch's {self.num_batches} batches")
        self._cancel()
        self.epoch = int(epoch)
        order = self.keys
        if self.shuffle:
            order = order[np.random.default_rng([self.seed, self.epoch]).permutation(len(order))]
        self._order = order[self.part_index::self.num_parts]
        self.cursor = self._submitted = int(start_batch)

    def reset(self):
        """Rewind; if the current epoch has been started, move on to the next epoch (Module.fit calls reset at
        each epoch end). Calling it twice in a row does not skip an epoch."""
        self.set_epoch(self.epoch + 1 if self.cursor > 0 else self.epoch)

    def _cancel(self):
        while self._pending:
            self._pending.popleft().cancel()

    # ---- batches --------------------------------------------------------------------------------------------
    def _batch_keys(self, b):
        start = b * self.batch_size
        keys = self._order[start:start + self.batch_size]
        pad = self.batch_size - len(keys)
        if pad:
            keys = np.concatenate([keys, np.resize(self._order, pad)])
        return keys, pad

    def _fill(self):
        while len(self._pending) < self.prefetch and self._submitted < self.num_batches:
            keys, pad = self._batch_keys(self._submitted)
            self._pending.append(self._batches.submit(self._load, keys, pad, self.epoch))
            self._submitted += 1

    def next(self):
        if self.cursor >= self.num_batches:
            raise StopIteration
        self._fill()
        future = self._pending.popleft()
        self.cursor += 1
        self._fill()
        data, label, labels, index, mirrored, pad = future.result()
        batch = mx.io.DataBatch([data], [label], pad=pad, index=index, provide_data=self.provide_data,
                                provide_label=self.provide_label)
        batch.mirrored, batch.host_label = mirrored, labels
        return batch

    def batch_bytes(self):
        """Bytes of one batch's images as float32."""
        return self.batch_size * int(np.prod(self.data_shape)) * 4

    def _load(self, keys, pad, epoch):
        """One batch (runs in a batch thread): its images decoded by the decode threads in contiguous parts, then
        copied once into the batch's NDArray."""
        data = np.empty((len(keys),) + self.data_shape, np.float32)
        labels = np.empty(len(keys), np.float32)
        mirrored = np.zeros(len(keys), bool)
        bounds = np.linspace(0, len(keys), min(self.workers, len(keys)) + 1).astype(int)
        parts = [self._pool.submit(self._decode, keys, start, stop, epoch, data, labels, mirrored)
                 for start, stop in zip(bounds[:-1], bounds[1:])]
        wait(parts)
        for part in parts:
            part.result()  # a failed record is raised here
        if self.mean is not None:
            data -= self.mean
        return (mx.nd.array(data, ctx=self.context), mx.nd.array(labels, ctx=self.context), labels,
                np.asarray(keys, np.int64), mirrored, pad)

    def _decode(self, keys, start, stop, epoch, data, labels, mirrored):
        """Decode images ``start:stop`` of a batch into its arrays (runs in a decode thread)."""
        import cv2

        _, height, width = self.data_shape
        augment = self.rand_mirror or self.cutoff > 0 or self.color_jittering > 0
        for i in range(start, stop):
            key = keys[i]
            try:
                image, label = self.reader.decode(int(key), cv2.IMREAD_COLOR)
            except VargfaceError:
                raise
            except Exception as error:  # a damaged record header or payload: name the record, not a stack
                raise VargfaceError(f"{self.path_imgrec}: record {key} cannot be read: {last_line(error)}") \
                    from None
            if self.num_classes is not None and not 0 <= label < self.num_classes:
                raise VargfaceError(f"{self.path_imgrec}: record {key} has label {label:g}, outside 0.."
                                    f"{self.num_classes - 1} (property says {self.num_classes} classes)")
            if image.shape[:2] != (height, width):
                if not self.resize:
                    raise VargfaceError(f"{self.path_imgrec}: record {key} is {image.shape[1]}x{image.shape[0]}, "
                                        f"data_shape wants {width}x{height} (resize=False)")
                image = resize_image(image, (height, width))
            rgb = image[..., ::-1]
            if augment:
                rng = np.random.default_rng([self.seed, epoch, int(key)])
                if self.rand_mirror and rng.random() < 0.5:
                    rgb, mirrored[i] = rgb[:, ::-1], True
                if self.color_jittering > 0 or self.cutoff > 0:
                    rgb = self._augment(np.ascontiguousarray(rgb), rng)
            data[i] = rgb.transpose(2, 0, 1)
            labels[i] = label

    def _augment(self, rgb, rng):
        """InsightFace's augmentations: JPEG re-compression (color_jittering > 1), brightness/contrast/saturation
        by up to 12.5% in random order (color_jittering > 0), and a grey square of side ``cutoff`` (half the time)."""
        import cv2

        if self.color_jittering > 1 and rng.random() < 0.5:
            quality = int(rng.integers(2, 21))
            ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
            rgb = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
        image = rgb.astype(np.float32)
        if self.color_jittering > 0:
            for op in rng.permutation(3):
                alpha = 1.0 + rng.uniform(-0.125, 0.125)
                if op == 0:  # brightness
                    image *= alpha
                elif op == 1:  # contrast
                    image = image * alpha + (1 - alpha) * float((image @ _GRAY).mean())
                else:  # saturation
                    image = image * alpha + (1 - alpha) * (image @ _GRAY)[..., None]
            np.clip(image, 0, 255, out=image)
        if self.cutoff > 0 and rng.random() < 0.5:
            h, w = image.shape[:2]
            cy, cx, half = int(rng.integers(h)), int(rng.integers(w)), self.cutoff // 2
            image[max(0, cy - half):min(h, cy + half), max(0, cx - half):min(w, cx + half)] = 128
        return image

    def close(self):
        self._cancel()
        self._batches.shutdown(wait=True)
        self._pool.shutdown(wait=True)
        self.reader.close()

    def __del__(self):
        try:
            self._cancel()
            self._batches.shutdown(wait=False)
            self._pool.shutdown(wait=False)
        except Exception:  # interpreter shutdown
            pass
