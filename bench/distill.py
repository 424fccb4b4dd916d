"""Distillation throughput: VarGFaceNet student training steps with the live r50 teacher vs the teacher cache, and
with 1, 2 and 4 distillation terms.

One run on synthetic 112x112 data (random weights: speed does not depend on them). Student training Modules
(embedding + ArcFace head + distillation terms, as the trainer builds them) take alternating steps: one whose
teacher embeddings come from the live teacher or from the cache (target: the cache at least 3x faster per step),
and one per term set (angular at the embedding, + stride16, + stride8 and stride4, each with its adapter), so a
shared machine's changing load hits every mode alike. Each term should cost only its own ops: a loss, an adapter
and one more teacher output, not another teacher forward."""
import argparse
import os
import sys
import tempfile
import time

from vargface.openmp import configure  # noqa: E402

configure(one_cpu_device=True)  # as `vargface` itself does on CPU


def save_random(preset, prefix):
    """A randomly initialised `preset` checkpoint (a teacher's speed does not depend on its weights)."""
    from vargface.symbols import get_symbol
    from vargface.train.checkpoint import random_params, save_embedding

    sym = get_symbol(preset)
    save_embedding(prefix, 1, sym, *random_params(sym, 112))
    return f"{prefix},1"


def main():
    from vargface import options

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default="r50", help="teacher preset (default: %(default)s; r100 as in the paper)")
    parser.add_argument("--student", default="vargfacenet", help="student network preset (default: %(default)s)")
    options.add_per_batch_size(parser, 4)  # one CPU device: the per-step batch
    parser.add_argument("--steps", type=int, default=4, help="training steps per mode (default: %(default)s)")
    args = parser.parse_args()

    import mxnet as mx

    from vargface.data.source import open_training_set
    from vargface.data.synth import make_synthetic_rec
    from vargface.train.config import generate_config, resolve_dataset
    from vargface.train.distill import make_plugin, teacher_taps
    from vargface.train.teacher import Teacher
    from vargface.train.teacher_cache import build_cache, TeacherCache
    from vargface.train.step import TrainStep
    from vargface.train.trainer import build_training_module

    quiet = lambda line: None  # noqa: E731
    batch = args.per_batch_size
    with tempfile.TemporaryDirectory(prefix="bench-distill-") as tmp:
        data = os.path.join(tmp, "data")
        make_synthetic_rec(data, identities=4, per_identity=batch, size=112, seed=0, progress=False)
        teacher_model = save_random(args.teacher, os.path.join(tmp, "teacher"))
        teacher = Teacher(teacher_model)
        tic = time.time()
        cache_path = build_cache(teacher, data, batch_size=batch, progress=False)
        cache_seconds = time.time() - tic

        def distill_config(terms, cache=""):
            return resolve_dataset(generate_config(args.student, data, "arcface", command="distill", kd=terms,
                                                   teacher_cache=cache, val_targets="", per_batch_size=batch))

        def training_module(plugin):
            """The student's training graph under ``plugin`` (the trainer's own), bound and ready for the trainer's
            steps (`TrainStep`)."""
            graph, module = build_training_module(config, plugin, [mx.cpu()])
            module.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": 0.001, "momentum": 0.9})
            train_step = TrainStep(module, [mx.cpu()], graph.extra_names)
            train_step.start()
            return train_step

        term_sets = {1: ["angular:embedding@7"], 2: ["angular:embedding@7", "angular:stride16@2"],
                     4: ["angular:embedding@7", "angular:stride16@2", "angular:stride8@1", "angular:stride4@0.5"]}
        config = distill_config(term_sets[1])
        live = make_plugin(config, teacher, log=quiet)
        cached = make_plugin(distill_config(term_sets[1], cache_path), teacher, log=quiet)
        assert isinstance(cached.cache, TeacherCache)
        module = training_module(live)
        by_terms = {}
        for count, terms in term_sets.items():
            terms_config = distill_config(terms)  # a teacher with the taps the terms read
            plugin = make_plugin(terms_config, Teacher(teacher_model, taps=teacher_taps(terms_config.terms)),
                                 log=quiet)
            by_terms[count] = (plugin, training_module(plugin))
        it = open_training_set(data).iterator(batch, 112, shuffle=True, rand_mirror=True)

        def step(plugin, train_step=module):
            try:
                b = it.next()
            except StopIteration:
                it.reset()
                b = it.next()
            tic = time.time()
            staged = train_step.stage(b)  # the images on the devices, for the student and a live teacher
            train_step(staged, plugin.extra_data(staged), (0, 0, 0))
            mx.nd.waitall()
            return time.time() - tic

        def teacher_only():
            images = mx.nd.random.uniform(0, 255, (batch, 3, 112, 112))
            tic = time.time()
            teacher.embed(images).wait_to_read()
            return time.time() - tic

        step(live), step(cached)  # bind, allocation, warm-up
        for plugin, terms_module in by_terms.values():
            step(plugin, terms_module)
        times = {"live teacher": [], "teacher cache": [], "(teacher forward)": []}
        times.update({f"{count} term{'s' if count > 1 else ''}": [] for count in term_sets})
        for _ in range(args.steps):
            times["live teacher"].append(step(live))
            times["teacher cache"].append(step(cached))
            times["(teacher forward)"].append(teacher_only())
            for count, (plugin, terms_module) in by_terms.items():
                times[f"{count} term{'s' if count > 1 else ''}"].append(step(plugin, terms_module))
            print("  " + ", ".join(f"{mode} {values[-1]:.2f} s" for mode, values in times.items()), file=sys.stderr)
        it.close()

    seconds = {mode: sum(values) / len(values) for mode, values in times.items()}
    print(f"\ndistillation bench: {args.teacher} teacher -> {args.student} student (angular loss), batch {batch}, "
          f"{args.steps} alternating steps per mode, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    print(f"one-off teacher cache: {4 * batch} images x 2 (plain + mirror) in {cache_seconds:.1f} s")
    print(f"{'mode':<18}{'samples/s':>10}{'s/step':>9}{'vs live':>9}")
    for mode, value in seconds.items():
        if "term" not in mode:
            print(f"{mode:<18}{batch / value:>10.2f}{value:>9.2f}{seconds['live teacher'] / value:>8.2f}x")
    print(f"\nterms (live teacher; 1: angular:embedding@7, 2: + angular:stride16@2, 4: + angular:stride8@1 and "
          "angular:stride4@0.5, each feature-map term with its adapter)")
    print(f"{'terms':<18}{'samples/s':>10}{'s/step':>9}{'vs 1 term':>11}")
    for mode, value in seconds.items():
        if "term" in mode:
            print(f"{mode:<18}{batch / value:>10.2f}{value:>9.2f}{value - seconds['1 term']:>+10.2f}s")
    ratio = seconds["live teacher"] / seconds["teacher cache"]
    print(f"cache vs live teacher: {ratio:.2f}x per step (target >= 3x: {'met' if ratio >= 3 else 'not met'}); "
          f"the cache removes the teacher forward, so the ceiling is 1 + teacher forward / student step = "
          f"{1 + seconds['(teacher forward)'] / seconds['teacher cache']:.2f}x here")


if __name__ == "__main__":
    main()
