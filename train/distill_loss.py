"""Distillation terms: one form of distance between a student tap and a teacher tap, with a weight.

Forms (``s``, ``t`` the student's and the teacher's vectors; ``^`` = L2-normalised, ``cos`` = s^.t^):
  angular  ||s^ - t^||^2 = 2 - 2cos, summed over dimensions (VarGFaceNet's Eq. 5; constant gradient)
  shrink   (1 - cos)^2 (ShrinkTeaNet's form; its gradient vanishes as cos -> 1)
  cosine   1 - cos (half of angular)
  l2       ||s - t||^2, raw (regresses the norm too)
  mse      the mean over dimensions of (s^ - t^)^2 (PocketNet's MSELoss: angular / D)
On an embedding (N, D) the vector is the sample's embedding. On a feature map (N, C, H, W) it is the channel vector
at each location, and the distance is averaged over the H x W locations (docs/losses.md)."""
import collections
import re

from vargface.errors import VargfaceError

FORMS = ("angular", "shrink", "cosine", "l2", "mse")
DEFAULT_TERM = "angular:embedding@7"
_TERM = re.compile(r"^(?P<form>\w+):(?P<student>\w+)(?:=(?P<teacher>\w+))?(?:@(?P<weight>[^@]+))?$")


class Term(collections.namedtuple("Term", "form student teacher weight")):
    """``weight * form(student tap, teacher tap)``; written FORM:TAP[@WEIGHT] or FORM:STUDENT=TEACHER[@WEIGHT]."""

    def __str__(self):
        taps = self.student if self.student == self.teacher else f"{self.student}={self.teacher}"
        return f"{self.form}:{taps}@{self.weight:g}"

    @property
    def label(self):
        """Metric-friendly name: form and taps."""
        taps = self.student if self.student == self.teacher else f"{self.student}_{self.teacher}"
        return f"{self.form}_{taps}"


def parse_term(text, option="--kd"):
    """'angular:stride8@0.5' -> Term('angular', 'stride8', 'stride8', 0.5); a bad spec names the option."""
    from vargface.symbols.taps import TAPS

    match = _TERM.match(str(text).strip())
    if not match:
        raise VargfaceError(f"{option} {text!r}: expected FORM:TAP[@WEIGHT] or FORM:STUDENT_TAP=TEACHER_TAP[@WEIGHT], "
                            f"e.g. {DEFAULT_TERM} or angular:stride8@1")
    form, student = match["form"], match["student"]
    teacher = match["teacher"] or student
    if form not in FORMS:
        raise VargfaceError(f"{option} {text!r}: unknown form {form!r}; expected one of {', '.join(FORMS)}")
    for tap in (student, teacher):
        if tap not in TAPS:
            raise VargfaceError(f"{option} {text!r}: unknown tap {tap!r}; expected one of {', '.join(TAPS)}")
    try:
        weight = float(match["weight"]) if match["weight"] is not None else 1.0
    except ValueError:
        raise VargfaceError(f"{option} {text!r}: weight {match['weight']!r} is not a number") from None
    if not weight > 0:
        raise VargfaceError(f"{option} {text!r}: the weight must be > 0 (got {weight:g}); leave the term out instead")
    return Term(form, student, teacher, weight)


def _unit(x, spatial):
    """Unit vectors along axis 1: per sample (N, D), or per location of a feature map (N, C, H, W)."""
    import mxnet as mx

    return mx.sym.L2Normalization(x, mode="channel" if spatial else "instance")


def per_sample_distance(student, teacher, form, spatial=False):
    """Symbol (N,) of the per-sample distance (averaged over locations when ``spatial``); the teacher side gets no
    gradient."""
    import mxnet as mx

    if form not in FORMS:
        raise VargfaceError(f"--kd-type: unknown distillation loss {form!r}; expected one of {', '.join(FORMS)}")
    teacher = mx.sym.BlockGrad(teacher)
    if form != "l2":
        student, teacher = _unit(student, spatial), _unit(teacher, spatial)
    if form in ("angular", "l2"):
        distance = mx.sym.sum(mx.sym.square(student - teacher), axis=1)
    elif form == "mse":
        distance = mx.sym.mean(mx.sym.square(student - teacher), axis=1)
    else:
        cosine = 1.0 - mx.sym.sum(student * teacher, axis=1)
        distance = mx.sym.square(cosine) if form == "shrink" else cosine
    return mx.sym.mean(distance, axis=(1, 2)) if spatial else distance


def adapter(student, channels, name, spatial=False):
    """Train-time 1x1 conv + BatchNorm mapping the student's channels to the teacher's ``channels``. Its arrays
    (NAME_conv_weight, NAME_bn_*) are not in the student's embedding graph, so checkpoints never hold them."""
    import mxnet as mx

    x = student if spatial else mx.sym.reshape(student, shape=(0, 0, 1, 1))
    x = mx.sym.Convolution(x, num_filter=int(channels), kernel=(1, 1), no_bias=True, name=f"{name}_conv")
    x = mx.sym.BatchNorm(x, fix_gamma=False, eps=2e-5, momentum=0.9, name=f"{name}_bn")
    return x if spatial else mx.sym.flatten(x)


def distill_loss(student, teacher, kd_type="angular", weight=1.0, name="kd_loss", spatial=False):
    """Training loss Symbol: outputs the per-sample distance (N,1) (its mean is the metric), and back-propagates
    ``weight * mean(distance)``, so the total objective is margin loss + the sum of weight * distance terms.

    The output is (N,1) because MakeLoss's ``normalization='batch'`` divides by the batch only for 2-d outputs."""
    import mxnet as mx

    if not weight > 0:
        raise VargfaceError(f"--kd-weight: must be > 0 (got {weight}); train without distillation instead")
    distance = per_sample_distance(student, teacher, kd_type, spatial)
    return mx.sym.MakeLoss(mx.sym.reshape(distance, shape=(-1, 1)), grad_scale=float(weight),
                           normalization="batch", name=name)
