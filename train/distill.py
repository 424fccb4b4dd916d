"""Distillation from a frozen teacher as terms and stages (VarGFaceNet, ShrinkTeaNet, PocketNet;
docs/distillation.md).

`DistillPlugin` plugs into the trainer's `fit`: each term (form x student tap x teacher tap x weight,
`vargface.train.distill_loss`) adds ``weight * distance`` between a student tap and the teacher's tap of the same
batch, which enters the training graph as an extra input (from the live teacher, or for embedding terms from the
teacher-embedding cache); where channel counts differ a train-time adapter maps the student's side. `distill` runs
generation 1 (scratch or init) and then generation k+1 from generation k's final student, each with a fresh
optimizer and schedule, under one teacher or a teacher schedule (the teacher's own per-epoch checkpoints, PocketNet's
multi-step distillation), and keeps a lineage manifest."""
import copy
import json
import os
import time

from vargface.errors import VargfaceError
from vargface.train.distill_loss import DEFAULT_TERM, adapter, distill_loss, parse_term
from vargface.train.trainer import TrainerPlugin

EMBEDDING = "embedding"
METRIC = "kd_loss"
# Config switches of augmentations the teacher cache cannot cover (it holds each record and its mirror only).
AUGMENTATIONS = ("data_color", "data_cutoff")


def teacher_input(tap):
    """Name of the training graph's input that carries the teacher's ``tap``."""
    return f"teacher_{tap}"


TEACHER_INPUT = teacher_input(EMBEDDING)


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
    return terms


def metric_names(terms):
    """One metric per term: ``kd_loss`` for a single term, else kd_FORM_TAP."""
    return [METRIC] if len(terms) == 1 else [f"kd_{t.label}" for t in terms]


class TeacherSchedule:
    """Multi-step teachers: the teacher's own training run kept as checkpoints PREFIX-0001, PREFIX-0002, ...
    (the teacher after 1, 2, ... epochs). Student epoch e (0-based) trains under PREFIX-(e+1); with ``every`` N,
    student update u (0-based) trains under PREFIX-(u // N + 1)."""

    def __init__(self, prefix, every=0):
        if int(every) < 0:
            raise VargfaceError(f"--teacher-every: must be >= 0 (got {every}); 0 advances the teacher per epoch")
        self.prefix, self.every = str(prefix), int(every)

    def number(self, epoch, update):
        return update // self.every + 1 if self.every else epoch + 1

    def check(self, epochs, updates):
        """Every checkpoint a run of ``epochs`` epochs / ``updates`` updates needs exists; else name the first
        missing one."""
        from vargface.symbols.checkpoint import checkpoint_files

        last = self.number(epochs - 1, updates - 1)
        for number in range(1, last + 1):
            for path in checkpoint_files(self.prefix, number):
                if not os.path.isfile(path):
                    unit = f"{updates} updates, a teacher every {self.every}" if self.every else f"{epochs} epochs"
                    raise VargfaceError(f"--teacher-schedule {self.prefix}: {path} does not exist; the student's "
                                        f"{unit} need the teacher checkpoints 1 to {last} ({self.prefix}-0001.params"
                                        f" ... {self.prefix}-{last:04d}.params)")

    def teacher(self, number, ctx, taps):
        from vargface.train.teacher import Teacher

        return Teacher(f"{self.prefix},{number}", ctx=ctx, option="--teacher-schedule", taps=taps)

    def describe(self):
        return {"prefix": self.prefix, "every": self.every}


class DistillPlugin(TrainerPlugin):
    """Adds ``sum of weight * form(student tap, teacher tap)`` over ``terms`` (`Term`s) to the student's training
    graph; ``teacher`` computes the taps the terms read (``cache``: its embeddings, precomputed)."""

    def __init__(self, teacher, terms, cache=None, kd_only=False, schedule=None):
        self.teacher, self.terms, self.cache = teacher, list(terms), cache
        self.kd_only, self.schedule = bool(kd_only), schedule
        self.teacher_taps = tuple(dict.fromkeys(t.teacher for t in self.terms))
        self.metric_names = metric_names(self.terms)
        self.spans = []  # which teacher checkpoint trained which epochs and updates

    def extra_inputs(self, batch_size):
        return [(teacher_input(tap), (batch_size,) + tuple(self.teacher.tap_shapes[tap])) for tap in self.teacher_taps]

    def extra_losses(self, embedding, config):
        """One loss per term; an adapter where channel counts differ, an error where spatial sizes differ."""
        import mxnet as mx

        from vargface.symbols.taps import tap_shapes, tap_symbol

        size = int(config.image_size[0])
        student_shapes = {tap: shape for tap, (_, shape) in tap_shapes(embedding, size).items()}
        losses = []
        for term, name in zip(self.terms, self.metric_names):
            if term.student not in student_shapes:
                raise VargfaceError(f"--kd {term}: the student {config.network} has no tap {term.student!r} "
                                    f"(it has {', '.join(student_shapes)})")
            mine, theirs = student_shapes[term.student], self.teacher.tap_shapes[term.teacher]
            if len(mine) != len(theirs) or mine[1:] != theirs[1:]:
                raise VargfaceError(
                    f"--kd {term}: the student's {term.student} is {_shape(mine)} per image but the teacher's "
                    f"{term.teacher} ({self.teacher.model}) is {_shape(theirs)}; a term compares an embedding with "
                    f"an embedding, or feature maps of the same height and width (pick taps of the same stride and "
                    f"the teacher's input size, {self.teacher.input_size})")
            spatial = len(mine) == 3
            student = tap_symbol(embedding, size, term.student)
            if mine[0] != theirs[0]:
                student = adapter(student, theirs[0], f"kd_adapter_{term.label}", spatial)
            teacher = mx.sym.Variable(teacher_input(term.teacher))
            losses.append((distill_loss(student, teacher, term.form, term.weight, name=name, spatial=spatial), name))
        return losses

    def extra_data(self, batch):
        import mxnet as mx

        if self.cache is not None:
            return [mx.nd.array(self.cache.lookup(batch.index, batch.mirrored))]
        features = self.teacher.features(batch.data[0])
        return [features[tap] for tap in self.teacher_taps]

    def detach_margin_loss(self):
        return self.kd_only

    def before_batch(self, epoch, num_update):
        """Switch to the scheduled teacher checkpoint, and note which checkpoint trains this update."""
        if self.schedule is not None:
            number = self.schedule.number(epoch, num_update)
            if number != self.teacher.epoch:
                previous = self.teacher
                self.teacher = self.schedule.teacher(number, previous.ctx, previous.taps)
                if self.teacher.tap_shapes != previous.tap_shapes:
                    raise VargfaceError(f"--teacher-schedule: {self.teacher.model} has taps {self.teacher.tap_shapes}"
                                        f" but {previous.model} had {previous.tap_shapes}; a schedule is one network")
        last = self.spans[-1] if self.spans else None
        if last is not None and last["teacher"] == self.teacher.model:
            last["epochs"][1], last["updates"][1] = max(last["epochs"][1], epoch), max(last["updates"][1], num_update)
        else:
            self.spans.append({"teacher": self.teacher.model, "checksum": self.teacher.checksum,
                               "epochs": [epoch, epoch], "updates": [num_update, num_update]})

    def describe(self):
        return {"distill": {"teacher": self.teacher.describe(), "terms": [str(t) for t in self.terms],
                            "kd_only": self.kd_only, "teacher_cache": self.cache.path if self.cache else None,
                            "teacher_schedule": self.schedule.describe() if self.schedule else None}}


def _shape(shape):
    return "x".join(map(str, shape))


def manifest_path(prefix):
    return f"{prefix}-lineage.json"


def _write_manifest(path, manifest):
    from vargface.atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True, default=str)


def uses_mirror_only(config):
    """True when the iterator's only augmentation is the horizontal mirror, so a teacher cache covers every input."""
    return not any(config.get(key) for key in AUGMENTATIONS)


def make_plugin(config, teacher, terms, teacher_cache=None, kd_only=False, schedule=None, log=print):
    """The plugin with the cheapest correct teacher source: the cache when given and valid for this run.

    The cache holds one teacher checkpoint's embeddings, so it is refused with a feature-map term (those maps,
    C x H x W per image, are too large to store) or a teacher schedule (the teacher changes during training).
    ``teacher`` is reloaded with the taps the terms read when it has others."""
    from vargface.train.teacher import Teacher
    from vargface.train.teacher_cache import TeacherCache, auto_cache_path

    terms = [parse_term(t) if isinstance(t, str) else t for t in terms]
    taps = tuple(dict.fromkeys(t.teacher for t in terms))
    if teacher.taps != taps:
        teacher = Teacher(teacher.model, ctx=teacher.ctx, taps=taps)
    cache = None
    if teacher_cache:
        if schedule is not None:
            raise VargfaceError(f"--teacher-cache {teacher_cache}: a cache holds the embeddings of one teacher "
                                f"checkpoint, but --teacher-schedule {schedule.prefix} changes the teacher during "
                                f"training; run without --teacher-cache")
        maps = [t for t in terms if t.teacher != EMBEDDING]
        if maps:
            raise VargfaceError(f"--teacher-cache {teacher_cache}: a cache holds only the teacher's embeddings, but "
                                f"--kd {maps[0]} needs its {maps[0].teacher} feature map every step; run without "
                                f"--teacher-cache")
        path = auto_cache_path(config.dataset_path, teacher) if teacher_cache == "auto" else teacher_cache
        if uses_mirror_only(config):
            cache = TeacherCache(path, config.dataset_path, teacher, image_shape=(3, *config.image_size))
            log(f"distill: teacher embeddings from cache {path}")
        else:
            on = ", ".join(key for key in AUGMENTATIONS if config.get(key))
            log(f"distill: augmentation beyond the mirror is on ({on}); the cache {path} does not cover those "
                f"images, so the live teacher runs instead")
    if cache is None:
        source = f"schedule {schedule.prefix}" if schedule else teacher.model
        log(f"distill: live teacher {source} ({teacher.emb_size}-d, input {teacher.input_size}, taps "
            f"{', '.join(dict.fromkeys(t.teacher for t in terms))})")
    return DistillPlugin(teacher, terms, cache, kd_only=kd_only, schedule=schedule)


def planned_length(config, contexts):
    """(epochs, updates) the student's run takes: from the number of batches per epoch, end_epoch and max_steps."""
    from vargface.data.iterator import FaceRecordIter
    from vargface.train.config import resolve_dataset

    config = resolve_dataset(copy.deepcopy(config))
    side = int(config.image_size[0])
    it = FaceRecordIter(path_imgrec=os.path.join(config.dataset_path, "train.rec"), data_shape=(3, side, side),
                        batch_size=int(config.per_batch_size) * len(contexts))
    per_epoch = it.num_batches
    it.close()
    updates = int(config.end_epoch) * per_epoch
    if int(config.max_steps):
        updates = min(updates, int(config.max_steps))
    return -(-updates // per_epoch), updates


def settings_of(config, **settings):
    """The distillation settings: the `distillation` table's defaults <- ``config``'s keys <- ``settings``."""
    from easydict import EasyDict

    from vargface.train.config import distillation

    unknown = [key for key in settings if key not in distillation]
    if unknown:
        raise VargfaceError(f"distill: unknown setting {unknown[0]!r} (expected {', '.join(distillation)})")
    merged = {key: config.get(key, value) for key, value in distillation.items()}
    return EasyDict({**merged, **settings})


def _chain_settings(plugin):
    """The settings a chain keeps across --resume, as the manifest records them, with their options."""
    return {"terms": ("--kd", [str(t) for t in plugin.terms]), "kd_only": ("--kd-only", plugin.kd_only),
            "teacher_schedule": ("--teacher-schedule/--teacher-every",
                                 plugin.schedule.describe() if plugin.schedule else None)}


def _start_manifest(path, plugin, generations, init, resume):
    """Load the manifest of an interrupted chain (resume) or begin a new one; refuse to mix chains."""
    teacher = plugin.teacher.describe()
    settings = _chain_settings(plugin)
    if os.path.exists(path):
        if not resume:
            raise VargfaceError(f"lineage manifest {path} exists: a distillation chain already ran under this prefix; "
                                f"pass --resume to continue it, or choose another --prefix")
        with open(path) as f:
            manifest = json.load(f)
        if manifest["teacher"]["checksum"] != teacher["checksum"]:
            raise VargfaceError(f"--resume: {path} was made with teacher {manifest['teacher']['checkpoint']} "
                                f"(checksum {manifest['teacher']['checksum']}), not --teacher "
                                f"{teacher['checkpoint']} ({teacher['checksum']})")
        for key, (option, value) in settings.items():
            if manifest.get(key) != value:
                old, new = (" ".join(v) if isinstance(v, list) else v for v in (manifest.get(key), value))
                raise VargfaceError(f"--resume: the chain in {path} uses {option} {old}, not {new}; resume it with "
                                    f"the same settings or start a new --prefix")
        manifest.update(generations_planned=generations, teacher_cache=plugin.cache.path if plugin.cache else None)
        return manifest
    return {"format": "vargface-distill-lineage/2", "teacher": teacher, **{k: v for k, (_, v) in settings.items()},
            "teacher_cache": plugin.cache.path if plugin.cache else None, "init": init or None,
            "generations_planned": generations, "generations": [], "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def distill(config, teacher=None, ctx=None, log=print, **settings):
    """Distillation: ``generations`` runs of the trainer's `fit` under the frozen teacher or the teacher schedule.

    ``config`` is the student's trainer config (`generate_config`, with or without the `distillation` keys);
    ``settings`` override its distillation keys: kd (terms), kd_type/kd_weight (the embedding term), kd_only
    (no margin loss on the embedding), generations, init, teacher_cache, teacher_schedule/teacher_every.
    ``teacher`` is a `Teacher` or 'prefix,epoch' (default: config.teacher). The config's prefix names the chain:
    checkpoints go to PREFIX-genK, the manifest to PREFIX-lineage.json, rewritten atomically after every change.
    Generation 1 starts from ``init`` ('prefix,epoch'; default ``config.pretrained``) or scratch; generation k+1
    from generation k's final checkpoint, weights only (`fit`'s --pretrained: fresh optimizer and schedule). Each
    generation runs the teacher schedule from its start. With ``config.resume`` the chain continues at the
    generation, and through the trainer's resume at the batch, where it stopped. Returns the manifest (with
    ``interrupted`` set when a signal stopped training)."""
    from vargface.context import parse_ctx
    from vargface.train import checkpoint as ckpt
    from vargface.train.teacher import Teacher
    from vargface.train.trainer import embedding_symbol, fit, resolve_prefix

    s = settings_of(config, **settings)
    terms = resolve_terms(s.kd, s.kd_type, s.kd_weight)
    generations = s.generations
    if not isinstance(generations, int) or generations < 1:
        raise VargfaceError(f"--generations: must be an integer >= 1 (got {generations})")
    if int(config.ckpt) == 0:
        raise VargfaceError("--ckpt 0 saves no checkpoint, but each generation starts from the previous one's "
                            "final checkpoint; use --ckpt 1, 2 or 3")
    contexts = ctx or parse_ctx(config.ctx, option="--ctx")
    taps = tuple(dict.fromkeys(t.teacher for t in terms))
    teacher = teacher or s.teacher or None
    schedule = None
    if s.teacher_schedule:
        if teacher:
            raise VargfaceError(f"--teacher {teacher} and --teacher-schedule {s.teacher_schedule}: give one; the "
                                f"schedule names every teacher checkpoint")
        schedule = TeacherSchedule(s.teacher_schedule, s.teacher_every)
        schedule.check(*planned_length(config, contexts))
        teacher = schedule.teacher(1, contexts, taps)
    elif s.teacher_every:
        raise VargfaceError("--teacher-every: applies to a --teacher-schedule; give the schedule's prefix")
    elif not teacher:
        raise VargfaceError("--teacher PREFIX,EPOCH (or --teacher-schedule PREFIX) is required")
    if isinstance(teacher, str):
        teacher = Teacher(teacher, ctx=contexts, taps=taps)
    init = s.init or config.pretrained or None
    plugin = make_plugin(config, teacher, terms, s.teacher_cache, kd_only=s.kd_only, schedule=schedule, log=log)
    plugin.extra_losses(embedding_symbol(config), config)  # checks taps and shapes before anything is written
    prefix = resolve_prefix(config)
    path = manifest_path(prefix)
    manifest = _start_manifest(path, plugin, generations, init, bool(config.resume))
    manifest.pop("interrupted", None)
    for number in range(1, generations + 1):
        entries = manifest["generations"]
        if number <= len(entries) and entries[number - 1]["status"] == "done":
            continue
        gen = copy.deepcopy(config)
        gen.prefix = f"{prefix}-gen{number}"
        if number <= len(entries):  # the generation that was interrupted: the trainer resumes it
            entry = entries[number - 1]
            gen.resume = os.path.exists(ckpt.state_path(gen.prefix))
        else:
            entry = {"generation": number, "prefix": gen.prefix, "status": "running",
                     "init": init if number == 1 else entries[-1]["final"]}
            entries.append(entry)
            gen.resume = False
        gen.pretrained = entry["init"] or ""
        entry.update(config=dict(gen), terms=manifest["terms"])
        entry.setdefault("started", time.strftime("%Y-%m-%d %H:%M:%S"))
        plugin.spans = entry.setdefault("teachers", [])
        _write_manifest(path, manifest)
        log(f"distill: generation {number}/{generations} from {entry['init'] or 'scratch'}"
            f"{' (resuming)' if gen.resume else ''} -> {gen.prefix}")
        try:
            result = fit(gen, plugin=plugin, ctx=contexts, log=log)
        except BaseException:
            if not os.path.exists(ckpt.state_path(gen.prefix)):  # refused before training: leave no trace
                entries.remove(entry)
            if entries:
                _write_manifest(path, manifest)
            else:
                os.remove(path)
            raise
        if result["interrupted"]:
            manifest["interrupted"] = result["interrupted"]
            _write_manifest(path, manifest)
            log(f"distill: interrupted in generation {number}; continue the chain with --resume")
            return manifest
        entry.update(status="done", final=f"{result['prefix']},{result['epoch']}", num_update=result["num_update"],
                     verification=result["best"], best_checkpoint=result["best_checkpoint"],
                     finished=time.strftime("%Y-%m-%d %H:%M:%S"))
        for name in plugin.metric_names:
            losses = [h[name] for h in result["history"] if h.get("type") == "train" and name in h]
            if losses:
                entry[name] = losses[-1]
        _write_manifest(path, manifest)
    log(format_table(manifest))
    return manifest


def format_table(manifest):
    """One line per generation: where it started, where it ended, its last kd losses and verification results."""
    targets = sorted({name for g in manifest["generations"] for name in (g.get("verification") or {})})
    losses = [k for k in sorted({k for g in manifest["generations"] for k in g}) if k.startswith("kd_")]
    head = ["gen", "init", "final"] + losses + targets
    rows = []
    for g in manifest["generations"]:
        results = g.get("verification") or {}
        rows.append([str(g["generation"]), g.get("init") or "scratch", g.get("final") or g["status"]]
                    + ["%.4f" % g[name] if name in g else "-" for name in losses]
                    + [_accuracy(results.get(name)) for name in targets])
    widths = [max(len(row[i]) for row in [head] + rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in [head] + rows]
    schedule = manifest.get("teacher_schedule")
    source = f"schedule {schedule['prefix']}" if schedule else manifest["teacher"]["checkpoint"]
    return "\n".join([f"distillation lineage (teacher {source}; {' + '.join(manifest['terms'])}"
                      f"{'; kd only' if manifest.get('kd_only') else ''})"] + lines)


def _accuracy(value):
    if isinstance(value, dict):
        value = value.get("accuracy", value.get("acc"))
    return "%.5f" % value if isinstance(value, (int, float)) else "-"
