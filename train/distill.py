"""Distillation from a frozen teacher as terms and stages (VarGFaceNet, ShrinkTeaNet, PocketNet;
docs/distillation.md).

`DistillPlugin` plugs into the trainer's `fit`: each term (form x student tap x teacher tap x weight,
`vargface.train.distill_loss`) adds ``weight * distance`` between a student tap and the teacher's tap of the same
batch, which enters the training graph as an extra input (from the live teacher, or for embedding terms from the
teacher-embedding cache); where channel counts differ a train-time adapter maps the student's side. `distill` runs
generation 1 (scratch or init) and then generation k+1 from generation k's final student, each with a fresh
optimizer and schedule, under one teacher or a teacher schedule (the teacher's own per-epoch checkpoints, PocketNet's
multi-step distillation), and keeps a lineage manifest."""
import json
import os
import time

from vargface.errors import VargfaceError
from vargface.train.distill_loss import EMBEDDING, adapter, distill_loss
from vargface.train.trainer import TrainerPlugin

METRIC = "kd_loss"
# Config switches of augmentations the teacher cache cannot cover (it holds each record and its mirror only).
AUGMENTATIONS = ("data_color", "data_cutoff")


def teacher_input(tap):
    """Name of the training graph's input that carries the teacher's ``tap``."""
    return f"teacher_{tap}"


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
        self.teacher_taps = teacher_taps(self.terms)
        missing = [tap for tap in self.teacher_taps if tap not in teacher.taps]
        if missing:
            raise VargfaceError(f"the teacher {teacher.model} was loaded without the tap {missing[0]!r} the terms read")
        self.metric_names = metric_names(self.terms)
        self.spans = []  # which teacher checkpoint trained which epochs and updates
        self.chain = None  # the RunFiles of the chain this plugin trains (for the generations' rerun hint)

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
        """The teacher's taps of ``batch``: from the cache (host memory, sliced to the devices by the step), or from
        the live teacher on the images the step staged on the student's devices (they stay there)."""
        import mxnet as mx

        if self.cache is not None:
            return [mx.nd.array(self.cache.lookup(batch.index, batch.mirrored))]
        features = self.teacher.features_on_devices(batch.device_data)
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

    def rerun(self, files):
        if self.chain is None:
            return super().rerun(files)
        return (f"a generation of the distillation chain {self.chain}; rerun the chain with `vargface distill "
                f"--config {self.chain.config} --prefix NEW_PREFIX`")


def _shape(shape):
    return "x".join(map(str, shape))


def teacher_taps(terms):
    """The teacher taps ``terms`` read, each once, in order."""
    return tuple(dict.fromkeys(t.teacher for t in terms))


def _write_manifest(path, manifest):
    from vargface.atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True, default=str)


def uses_mirror_only(config):
    """True when the iterator's only augmentation is the horizontal mirror, so a teacher cache covers every input."""
    return not any(config[key] for key in AUGMENTATIONS)


def make_plugin(config, teacher, schedule=None, log=print):
    """The plugin of ``config``'s terms with the cheapest correct teacher source: the cache
    (``config.teacher_cache``) when given and valid for this run, else the live ``teacher``.

    The cache holds one teacher checkpoint's embeddings, so it is refused with a feature-map term (those maps,
    C x H x W per image, are too large to store) or a teacher schedule (the teacher changes during training)."""
    from vargface.train.teacher_cache import TeacherCache, auto_cache_path

    terms, teacher_cache = config.terms, config.teacher_cache
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
            on = ", ".join(key for key in AUGMENTATIONS if config[key])
            log(f"distill: augmentation beyond the mirror is on ({on}); the cache {path} does not cover those "
                f"images, so the live teacher runs instead")
    if cache is None:
        source = f"schedule {schedule.prefix}" if schedule else teacher.model
        log(f"distill: live teacher {source} ({teacher.emb_size}-d, input {teacher.input_size}, taps "
            f"{', '.join(teacher_taps(terms))})")
    return DistillPlugin(teacher, terms, cache, kd_only=config.kd_only, schedule=schedule)


def planned_length(config, contexts):
    """(epochs, updates) the student's run takes: from the number of batches per epoch, end_epoch and max_steps."""
    from vargface.train.config import open_data

    per_epoch = open_data(config).num_batches(int(config.per_batch_size) * len(contexts))
    updates = int(config.end_epoch) * per_epoch
    if int(config.max_steps):
        updates = min(updates, int(config.max_steps))
    return -(-updates // per_epoch), updates


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


def _teacher(config, contexts):
    """(Teacher, TeacherSchedule or None) of ``config``, loaded once with the taps its terms read."""
    from vargface.train.teacher import Teacher

    if config.teacher and config.teacher_schedule:
        raise VargfaceError(f"--teacher {config.teacher} and --teacher-schedule {config.teacher_schedule}: give one; "
                            f"the schedule names every teacher checkpoint")
    taps = teacher_taps(config.terms)
    if config.teacher_schedule:
        schedule = TeacherSchedule(config.teacher_schedule, config.teacher_every)
        schedule.check(*planned_length(config, contexts))
        return schedule.teacher(1, contexts, taps), schedule
    if config.teacher_every:
        raise VargfaceError("--teacher-every: applies to a --teacher-schedule; give the schedule's prefix")
    if not config.teacher:
        raise VargfaceError("--teacher PREFIX,EPOCH (or --teacher-schedule PREFIX) is required")
    return Teacher(config.teacher, ctx=contexts, taps=taps), None


def distill(config, ctx=None, log=print):
    """Distillation: ``config.generations`` runs of the trainer's `fit` under the frozen teacher or the teacher
    schedule; ``config`` is a `vargface distill` `RunConfig` (its terms resolved).

    The config's prefix names the chain, held by one lock from start to end: checkpoints go to PREFIX-genK, the
    manifest to PREFIX-lineage.json (rewritten atomically after every change), the chain's settings to
    PREFIX-config.py. Generation 1 starts from ``init`` ('prefix,epoch'; default ``pretrained``) or scratch;
    generation k+1 from generation k's final checkpoint, weights only (`fit`'s --pretrained: fresh optimizer and
    schedule). Each generation runs the teacher schedule from its start. With ``config.resume`` the chain continues
    at the generation, and through the trainer's resume at the batch, where it stopped; with ``config.overwrite``
    every file of an earlier chain under the prefix is removed first. The teacher is loaded and the training graph
    built once, before anything is written. Returns the manifest (with ``interrupted`` set when a signal stopped
    training)."""
    from vargface.atomic import make_folder
    from vargface.context import parse_ctx
    from vargface.train.checkpoint import PrefixLock
    from vargface.train.config import resolve_dataset, resolve_prefix, save_config
    from vargface.train.run_files import RunFiles
    from vargface.train.trainer import training_graph

    contexts = ctx or parse_ctx(config.ctx, option="--ctx")
    config = resolve_dataset(config)
    chain = RunFiles(resolve_prefix(config))
    teacher, schedule = _teacher(config, contexts)
    plugin = make_plugin(config, teacher, schedule, log=log)
    plugin.chain = chain
    # the one training graph of every generation; its taps and shapes are checked before anything is written
    graph = training_graph(config, plugin, int(config.per_batch_size) * len(contexts), contexts)
    make_folder(os.path.dirname(os.path.abspath(chain.prefix)), f"--prefix {chain.prefix}")
    lock = PrefixLock(chain.prefix).acquire()
    try:
        _claim_chain(chain, config, log)
        manifest = _start_manifest(chain.lineage, plugin, config.generations, config.init or config.pretrained,
                                   bool(config.resume))
        done = [g for g in manifest["generations"] if g["status"] == "done"]
        if config.resume and len(done) >= config.generations:
            log(f"distill: the chain at {chain} already finished ({len(done)} generations); nothing changed")
            return manifest
        save_config(config, chain.config, [f"the distillation chain at {chain}, resolved; rerun it with `vargface "
                                           f"distill --config {chain.config} --prefix NEW_PREFIX`"],
                    {"plugin": plugin.describe(), "contexts": [str(c) for c in contexts]})
        return _run_chain(config, chain, plugin, graph, manifest, contexts, log)
    finally:
        lock.release()


def _claim_chain(chain, config, log):
    """A new chain needs an empty prefix, or --overwrite, which removes every file of the old chain first."""
    old = chain.existing()
    if config.resume:
        if not os.path.exists(chain.lineage):
            raise VargfaceError(f"--resume: no distillation chain at {chain} ({chain.lineage} does not exist)")
        return
    if old and not config.overwrite:
        raise VargfaceError(f"--prefix {chain} already holds a run ({len(old)} files, e.g. {old[0]}); pass --resume "
                            f"to continue it or --overwrite to start a new one there")
    for path in old:
        os.remove(path)
    if old:
        log(f"distill: --overwrite: removed the {len(old)} files of the previous run under {chain}")


def _run_chain(config, chain, plugin, graph, manifest, contexts, log):
    from vargface.train.trainer import fit

    path, generations = chain.lineage, config.generations
    init = config.init or config.pretrained or None
    manifest.pop("interrupted", None)
    for number in range(1, generations + 1):
        entries = manifest["generations"]
        if number <= len(entries) and entries[number - 1]["status"] == "done":
            continue
        files = chain.generation(number)
        resume = os.path.exists(files.state)
        if number <= len(entries):  # the generation that was interrupted: the trainer resumes it
            entry = entries[number - 1]
        else:
            entry = {"generation": number, "prefix": files.prefix, "status": "running",
                     "init": init if number == 1 else entries[-1]["final"]}
            entries.append(entry)
        # a generation without a state restarts: the chain owns whatever an earlier attempt left there
        gen = config.replace(prefix=files.prefix, resume=resume, overwrite=not resume, pretrained=entry["init"] or "")
        entry.update(config=gen.to_dict(), terms=manifest["terms"])
        entry.setdefault("started", time.strftime("%Y-%m-%d %H:%M:%S"))
        plugin.spans = entry.setdefault("teachers", [])
        _write_manifest(path, manifest)
        log(f"distill: generation {number}/{generations} from {entry['init'] or 'scratch'}"
            f"{' (resuming)' if resume else ''} -> {files}")
        try:
            result = fit(gen, plugin=plugin, ctx=contexts, log=log, graph=graph, label=f"distill gen{number}")
        except BaseException:
            if not os.path.exists(files.state):  # refused before training: leave no trace
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
