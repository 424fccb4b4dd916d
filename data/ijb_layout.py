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

    @property
    def galleries(self):
        """{'G1': path, 'G2': path} of the 1:N gallery files present, under the target's own spelling or else the
        other target's."""
        found = {}
        for index in (1, 2):
            own = GALLERY_SPELLINGS[self.target][index - 1]
            spellings = [own] + [s[index - 1] for s in GALLERY_SPELLINGS.values() if s[index - 1] != own]
            paths = [self.gallery(index, s) for s in spellings if os.path.isfile(self.gallery(index, s))]
            if paths:
                found[f"G{index}"] = paths[0]
        return found

    @property
    def has_1n(self):
        """Whether the 1:N files are there: both galleries and the probes."""
        return len(self.galleries) == 2 and os.path.isfile(self.probes)
