"""Distillation terms: one form of distance between a student tap and a teacher tap, with a weight.

Every form is one distance function and one help line in `FORMS`; the CLI help, the parser and the docs table
(docs/distillation.md#forms) read it, so a new form is one function and one entry. ``s``, ``t`` are the student's
and the teacher's vectors, ``^`` L2-normalised, ``cos`` = s^.t^. On an embedding (N, D) the vector is the sample's
embedding; on a feature map (N, C, H, W) it is the channel vector at each location, and the distance is averaged
over the H x W locations (docs/losses.md)."""
import collections
import re
from dataclasses import dataclass
from typing import Callable

from vargface.errors import VargfaceError


def _sum_squares(s, t):
    import mxnet as mx

    return mx.sym.sum(mx.sym.square(s - t), axis=1)


def _one_minus_cos(s, t):
    import mxnet as mx

    return 1.0 - mx.sym.sum(s * t, axis=1)


def _angular(s, t, unit):
    return _sum_squares(unit(s), unit(t))


def _shrink(s, t, unit):
    import mxnet as mx

    return mx.sym.square(_one_minus_cos(unit(s), unit(t)))


def _cosine(s, t, unit):
    return _one_minus_cos(unit(s), unit(t))


def _l2(s, t, unit):
    return _sum_squares(s, t)


def _mse(s, t, unit):
    import mxnet as mx

    return mx.sym.mean(mx.sym.square(unit(s) - unit(t)), axis=1)


@dataclass(frozen=True)
class Form:
    """``distance(student, teacher, unit)`` -> per-vector distance Symbol, ``unit`` L2-normalising a vector."""

    distance: Callable
    help: str


FORMS = {
    "angular": Form(_angular, "squared distance of the unit vectors, sum over dimensions of (s^ - t^)^2 = 2 - 2cos "
                              "(VarGFaceNet's Eq. 5)"),
    "shrink": Form(_shrink, "(1 - cos)^2; its gradient vanishes as cos -> 1 (ShrinkTeaNet)"),
    "cosine": Form(_cosine, "1 - cos (half of angular)"),
    "l2": Form(_l2, "squared distance of the raw vectors, sum over dimensions of (s - t)^2 (regresses the norm too)"),
    "mse": Form(_mse, "the mean over dimensions of (s^ - t^)^2 = angular / D (PocketNet's MSELoss)"),
}
EMBEDDING = "embedding"
DEFAULT_TERM = "angular:embedding@7"  # VarGFaceNet's objective L_arc + 7 L_s
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
    if not 0 < weight < float("inf"):
        raise VargfaceError(f"{option} {text!r}: the weight must be > 0 and finite (got {weight:g}); leave the "
                            f"term out instead")
    return Term(form, student, teacher, weight)


def resolve_terms(kd, kd_type=None, kd_weight=None):
    """The terms of the `kd` specs; ``kd_type``/``kd_weight`` (when set) change the embedding term's form and
    weight, or add one (default form angular, weight 7)."""
    terms = [parse_term(text) for text in ([kd] if isinstance(kd, str) else list(kd or []))]
    if kd_type is not None or kd_weight is not None:
        found = [i for i, t in enumerate(terms) if t.student == t.teacher == EMBEDDING]
        base = terms[found[0]] if found else parse_term(DEFAULT_TERM)
        weight = base.weight if kd_weight is None else kd_weight
        term = parse_term(f"{kd_type or base.form}:{EMBEDDING}@{weight}", option="--kd-type/--kd-weight")
        terms = terms[:found[0]] + [term] + terms[found[0] + 1:] if found else terms + [term]
    if not terms:
        raise VargfaceError(f"--kd: no distillation term given (e.g. --kd {DEFAULT_TERM})")
    labels = [t.label for t in terms]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise VargfaceError(f"--kd: the term {twice[0]} is given twice; give each form and tap pair once")
    return tuple(terms)


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
    distance = FORMS[form].distance(student, mx.sym.BlockGrad(teacher), lambda x: _unit(x, spatial))
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

    distance = per_sample_distance(student, teacher, kd_type, spatial)
    return mx.sym.MakeLoss(mx.sym.reshape(distance, shape=(-1, 1)), grad_scale=float(weight),
                           normalization="batch", name=name)
