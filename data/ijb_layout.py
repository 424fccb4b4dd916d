"""InsightFace's distribution of IJB-B / IJB-C: where each file of a target lives (docs/formats.md). Written by
`vargface data synth-ijb`, read by `vargface ijb`."""
import os

from vargface.errors import VargfaceError

TARGETS = ("IJBB", "IJBC")
GALLERY_SPELLINGS = {"IJBB": ("S1", "S2"), "IJBC": ("G1", "G2")}  # each target's own; either is read


def target_key(target, option="--target"):
    key = str(target).upper().replace("-", "")
    if key not in TARGETS:
        raise VargfaceError(f"{option} {target}: expected IJBB or IJBC")
    return key


class Layout:
    """The paths of one target's files under ``root`` (``IJB_release/IJBC``, say)."""

    def __init__(self, root, target):
        self.root, self.target = os.fspath(root), target_key(target)
        stem = self.target.lower()
        self.meta = os.path.join(self.root, "meta")
        self.crops = os.path.join(self.root, "loose_crop")
        self.images = os.path.join(self.meta, f"{stem}_name_5pts_score.txt")
        self.templates = os.path.join(self.meta, f"{stem}_face_tid_mid.txt")
        self.pairs = os.path.join(self.meta, f"{stem}_template_pair_label.txt")
        self.probes = os.path.join(self.meta, f"{stem}_1N_probe_mixed.csv")

    def gallery(self, index, spelling=None):
        """Gallery 1 or 2 (G1/G2; S1/S2 for IJB-B), under ``spelling`` or the target's own."""
        spelling = spelling or GALLERY_SPELLINGS[self.target][index - 1]
        return os.path.join(self.meta, f"{self.target.lower()}_1N_gallery_{spelling}.csv")
