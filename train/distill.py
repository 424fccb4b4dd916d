"""Distillation from a frozen teacher, and recursive distillation over generations (VarGFaceNet;
docs/losses.md#recursive-distillation).

`DistillPlugin` plugs into the trainer's `fit`: the teacher's embedding of each batch enters the training graph
as an extra input (from the live teacher, or from the teacher-embedding cache), and the distillation loss is
added to the margin loss. `distill` runs generation 1 (scratch or --init) and then generation k+1 from
generation k's final student, each with a fresh optimizer and schedule, and keeps a lineage manifest."""
import copy
import json
import os
import time

from vargface.errors import VargfaceError
from vargface.train.distill_loss import distill_loss
from vargface.train.trainer import TrainerPlugin

TEACHER_INPUT = "teacher_embedding"
METRIC = "kd_loss"
# Config switches of augmentations the teacher cache cannot cover (it holds each record and its mirror only).
AUGMENTATIONS = ("data_color", "data_cutoff")


class DistillPlugin(TrainerPlugin):
    """Adds ``weight * distance(student fc1_output, teacher embedding)`` to the student's training graph."""

    def __init__(self, teacher, kd_type="angular", kd_weight=1.0, cache=None):
        self.teacher, self.kd_type, self.kd_weight, self.cache = teacher, kd_type, float(kd_weight), cache

    def extra_inputs(self, batch_size):
        return [(TEACHER_INPUT, (batch_size, self.teacher.emb_size))]

    def extra_losses(self, embedding, config):
        """The distillation loss; refuses a student whose embedding size differs from the teacher's."""
        import mxnet as mx

        student = int(embedding.infer_shape(data=(1, 3, *config.image_size))[1][0][1])
        if student != self.teacher.emb_size:
            raise VargfaceError(f"--teacher {self.teacher.model}: the teacher's embedding has {self.teacher.emb_size} "
                                f"dimensions but the student's has {student}; set the student's --emb-size "
                                f"{self.teacher.emb_size} (or use a teacher with {student}-d embeddings)")
        loss = distill_loss(embedding, mx.sym.Variable(TEACHER_INPUT), self.kd_type, self.kd_weight)
        return [(loss, METRIC)]

    def extra_data(self, batch):
        import mxnet as mx

        if self.cache is not None:
            return [mx.nd.array(self.cache.lookup(batch.index, batch.mirrored))]
        return [self.teacher.embed(batch.data[0])]

    def describe(self):
        return {"distill": {"teacher": self.teacher.describe(), "kd_type": self.kd_type, "kd_weight": self.kd_weight,
                            "teacher_cache": self.cache.path if self.cache is not None else None}}


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


def make_plugin(config, teacher, kd_type, kd_weight, teacher_cache=None, log=print):
    """The plugin with the cheapest correct teacher source: the cache when given and valid for this run."""
    from vargface.train.teacher_cache import TeacherCache, default_cache_path

    cache = None
    if teacher_cache:
        path = default_cache_path(config.dataset_path, teacher) if teacher_cache == "auto" else teacher_cache
        if uses_mirror_only(config):
            cache = TeacherCache(path, config.dataset_path, teacher, image_shape=(3, *config.image_size))
            log(f"distill: teacher embeddings from cache {path}")
        else:
            on = ", ".join(key for key in AUGMENTATIONS if config.get(key))
            log(f"distill: augmentation beyond the mirror is on ({on}); the cache {path} does not cover those "
                f"images, so the live teacher runs instead")
    if cache is None:
        log(f"distill: live teacher {teacher.model} ({teacher.emb_size}-d, input {teacher.input_size})")
    return DistillPlugin(teacher, kd_type, kd_weight, cache)


def _start_manifest(path, plugin, generations, init, resume):
    """Load the manifest of an interrupted chain (resume) or begin a new one; refuse to mix chains."""
    teacher = plugin.teacher.describe()
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
        for key, value in (("kd_type", plugin.kd_type), ("kd_weight", plugin.kd_weight)):
            if manifest[key] != value:
                raise VargfaceError(f"--resume: the chain in {path} uses --{key.replace('_', '-')} {manifest[key]}, "
                                    f"not {value}; resume it with the same value or start a new --prefix")
        manifest.update(generations_planned=generations, teacher_cache=plugin.cache.path if plugin.cache else None)
        return manifest
    return {"format": "vargface-distill-lineage/1", "teacher": teacher, "kd_type": plugin.kd_type,
            "kd_weight": plugin.kd_weight, "teacher_cache": plugin.cache.path if plugin.cache else None,
            "init": init or None, "generations_planned": generations, "generations": [],
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def distill(config, teacher, kd_type="angular", kd_weight=1.0, generations=1, init=None, teacher_cache=None,
            ctx=None, log=print):
    """Recursive distillation: ``generations`` runs of the trainer's `fit` under the same frozen teacher.

    ``config`` is the student's trainer config (`generate_config`); its prefix names the chain: checkpoints go to
    PREFIX-genK, the manifest to PREFIX-lineage.json, rewritten atomically after every change. Generation 1
    starts from ``init`` ('prefix,epoch'; default ``config.pretrained``) or scratch; generation k+1 from generation
    k's final checkpoint, weights only (`fit`'s --pretrained: fresh optimizer and schedule). With
    ``config.resume`` the chain continues at the generation, and through the trainer's resume at the batch,
    where it stopped. ``teacher`` is a `Teacher` or 'prefix,epoch'. Returns the manifest (with
    ``interrupted`` set when a signal stopped training)."""
    from vargface.context import parse_ctx
    from vargface.train import checkpoint as ckpt
    from vargface.train.teacher import Teacher
    from vargface.train.trainer import embedding_symbol, fit, resolve_prefix

    if not isinstance(generations, int) or generations < 1:
        raise VargfaceError(f"--generations: must be an integer >= 1 (got {generations})")
    if int(config.ckpt) == 0:
        raise VargfaceError("--ckpt 0 saves no checkpoint, but each generation starts from the previous one's "
                            "final checkpoint; use --ckpt 1, 2 or 3")
    contexts = ctx or parse_ctx(config.ctx, option="--ctx")
    if isinstance(teacher, str):
        teacher = Teacher(teacher, ctx=contexts)
    init = init or config.pretrained or None
    plugin = make_plugin(config, teacher, kd_type, kd_weight, teacher_cache, log=log)
    plugin.extra_losses(embedding_symbol(config), config)  # checks sizes and options before anything is written
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
        entry["config"] = dict(gen)
        entry.setdefault("started", time.strftime("%Y-%m-%d %H:%M:%S"))
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
        losses = [h[METRIC] for h in result["history"] if h.get("type") == "train" and METRIC in h]
        if losses:
            entry[METRIC] = losses[-1]
        _write_manifest(path, manifest)
    log(format_table(manifest))
    return manifest


def format_table(manifest):
    """One line per generation: where it started, where it ended, its last kd loss and verification results."""
    targets = sorted({name for g in manifest["generations"] for name in (g.get("verification") or {})})
    head = ["gen", "init", "final", METRIC] + targets
    rows = []
    for g in manifest["generations"]:
        results = g.get("verification") or {}
        rows.append([str(g["generation"]), g.get("init") or "scratch", g.get("final") or g["status"],
                     "%.4f" % g[METRIC] if METRIC in g else "-"]
                    + [_accuracy(results.get(name)) for name in targets])
    widths = [max(len(row[i]) for row in [head] + rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in [head] + rows]
    return "\n".join([f"distillation lineage (teacher {manifest['teacher']['checkpoint']}, {manifest['kd_type']}"
                      f" x {manifest['kd_weight']})"] + lines)


def _accuracy(value):
    if isinstance(value, dict):
        value = value.get("accuracy", value.get("acc"))
    return "%.5f" % value if isinstance(value, (int, float)) else "-"
