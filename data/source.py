"""The training set as training sees it: one function, `open_training_set`, opens a data folder for the trainer,
the teacher-embedding cache, the planning of a run's length and the config's data checks.

A data folder (made by `vargface data`, or an InsightFace set) holds ``train.rec``, ``train.idx``, ``property``
and the verification packs ``*.bin``; `FaceRecordIter` reads it."""
import os

from vargface.data.recordio import PROPERTY_NAME, RecReader, read_property, rec_paths
from vargface.errors import VargfaceError


class TrainingSet:
    """A checked data folder: its classes (from ``property``, agreeing with the identity records), its stored
    image size, its packs, a fingerprint of its records, and iterators over it."""

    def __init__(self, folder, option="--dataset"):
        self.folder = os.fspath(folder)
        self.rec, self.idx, _ = rec_paths(self.folder) if os.path.isdir(self.folder) else (None, None, None)
        if self.rec is None or not os.path.isfile(self.rec):
            what = "does not exist" if not os.path.exists(self.folder) else "has no train.rec"
            raise VargfaceError(f"{option} {self.folder}: the data folder {what} (make one with `vargface data`)")
        self.property_path = os.path.join(self.folder, PROPERTY_NAME)
        self.num_classes, height, width = read_property(self.folder)
        self.image_size = (height, width)
        with RecReader(self.folder, check_offsets=False) as reader:
            identities = len(reader.identity_keys) if reader.has_header else None
        if identities is not None and identities != self.num_classes:
            raise VargfaceError(f"{self.property_path} says {self.num_classes} classes but {self.rec} has "
                                f"{identities} identity records; classes without images would train silently wrong "
                                f"(fix the property file, or rebuild the set with `vargface data rec`)")

    def packs(self):
        """Names of the verification packs in the folder (NAME.bin)."""
        return sorted(name[:-4] for name in os.listdir(self.folder) if name.endswith(".bin"))

    def fingerprint(self):
        """Checksums of train.rec (size + head, middle and tail MiB) and train.idx (whole: it maps every record)."""
        from vargface.fingerprint import file_checksum

        return {"rec": file_checksum(self.rec), "idx": file_checksum(self.idx, whole=True)}

    def iterator(self, batch_size, image_size=None, **options):
        """A `FaceRecordIter` over the set at ``image_size`` (default: the stored size); ``options`` are its own
        (shuffle, rand_mirror, seed, part_index, num_parts, num_workers, ...)."""
        from vargface.data.iterator import FaceRecordIter

        side = image_size or self.image_size[0]
        return FaceRecordIter(path_imgrec=self.rec, batch_size=batch_size, data_shape=(3, side, side), **options)

    def num_batches(self, batch_size, num_parts=1):
        """Batches per epoch of each of ``num_parts`` parts (the last partial batch is dropped)."""
        it = self.iterator(batch_size, num_parts=num_parts, num_workers=1)
        try:
            return it.num_batches
        finally:
            it.close()


def open_training_set(folder, option="--dataset"):
    """The `TrainingSet` in ``folder``; a missing or inconsistent set is an error naming the file."""
    return TrainingSet(folder, option)
