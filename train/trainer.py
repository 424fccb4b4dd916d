"""Data-parallel training on mx.mod.Module: embedding network + margin-softmax head (+ plugin losses), gradients
summed over the devices by a KVStore (device, nccl, local) or over machines (dist_sync, dist_device_sync), float32
or mixed precision, exact resume, periodic verification, NaN guard. One step is `vargface.train.step.TrainStep`.
With --fc-parallel the classifier is sharded over the devices and workers outside the Module
(`vargface.train.partial_fc`).

A dist_sync run sums the gradients through the kvstore and updates on the workers (the servers only sum), and its
workers decide together: a NaN or a signal on any of them stops all of them at the same update, and a worker that
cannot start stops the others.

Determinism for resume: the data order comes from (seed, epoch) in FaceRecordIter, the MXNet and NumPy RNGs are
re-seeded from (seed, update count) before every batch, and the update count drives the LR schedule; so restoring
weights, optimizer state, loss scale, epoch, batch and update count reproduces the uninterrupted run (on CPUs
exactly; on GPUs within the limits of docs/environment.md#exact-resume-on-gpus)."""
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass

import numpy as np

from vargface.atomic import make_folder
from vargface.errors import VargfaceError
from vargface.train import checkpoint as ckpt
from vargface.train.checkpoint import TrainState
from vargface.train.config import resolve_prefix
from vargface.train.metrics import NanLoss, Window
from vargface.train.precision import FLOAT32, INITIAL_SCALE, LossScale
from vargface.train.run_files import RunFiles
from vargface.train.workers import WorkerGroup


class TrainerPlugin:
    """Extension points of fit(); the base class changes nothing. Distillation is one plugin."""

    def extra_inputs(self, batch_size):
        """-> list of (name, shape): extra data fed to the training graph, sliced across devices like `data`."""
        return []

    def extra_losses(self, embedding, config):
        """embedding: the student's fc1_output Symbol -> list of (MakeLoss Symbol, metric_name).

        The margin loss is a mean over each device's batch and the trainer averages over devices and workers, so a
        plugin loss should also be a per-device mean (MakeLoss(..., normalization='batch') on an (N, 1) output)."""
        return []

    def extra_data(self, batch):
        """batch: DataBatch from FaceRecordIter (has .index, .mirrored, and .device_data: the images already on
        each training device) -> one entry per extra input: an NDArray of the whole batch (the step slices it to
        the devices) or a list of one NDArray per device (e.g. computed there from ``device_data``)."""
        return []

    def detach_margin_loss(self):
        """True: the margin loss trains its classifier on a gradient-blocked embedding (its loss and accuracy are
        still reported), so the embedding learns from the plugin's losses alone (distillation's --kd-only)."""
        return False

    def before_batch(self, epoch, num_update):
        """Called before each training batch with the 0-based epoch and the updates done so far (e.g. to switch
        to the teacher checkpoint of this epoch)."""

    def describe(self):
        """-> dict recorded in the saved config."""
        return {}

    def rerun(self, files):
        """How to rerun what ran at ``files`` (a `RunFiles`): the saved config's header says it."""
        return f"rerun it with `vargface train --config {files.config} --prefix NEW_PREFIX`"


def make_initializer(name):
    """'xavier_<uniform|gaussian>_<in|out|avg>_<magnitude>' (checked by the schema's net_init key) ->
    mx.init.Xavier (docs/recipes.md#vargfacenet)."""
    import mxnet as mx

    _, rnd_type, factor_type, magnitude = str(name).split("_")
    return mx.init.Xavier(rnd_type=rnd_type, factor_type=factor_type, magnitude=float(magnitude))


def embedding_symbol(config):
    """The embedding Symbol of ``config``'s network preset with its options."""
    from vargface.symbols import get_symbol
    from vargface.train.config import network_options

    return get_symbol(config.network, **network_options(config))


@dataclass
class TrainingGraph:
    """The graph fit() trains: the faithful embedding (what checkpoints hold), the training Symbol (margin head on
    the embedding or its fast rewrite, plus the plugin's losses; with --fc-parallel the embedding itself, whose
    gradient the sharded classifier gives) and the shapes of one global batch."""

    emb_sym: object
    train_sym: object
    data_shapes: list
    label_shapes: list
    extra_names: list  # the training log's name of each output after the class probabilities

    def bind(self, contexts):
        """A Module of the training Symbol bound for training on ``contexts`` (the batch split across them)."""
        import mxnet as mx

        module = mx.mod.Module(self.train_sym, data_names=[n for n, _ in self.data_shapes],
                               label_names=[n for n, _ in self.label_shapes], context=contexts,
                               logger=logging.getLogger("vargface"))
        module.bind(data_shapes=self.data_shapes, label_shapes=self.label_shapes or None)
        return module


def training_graph(config, plugin, batch_size, contexts):
    """`TrainingGraph` of ``config`` with ``plugin``'s inputs and losses, for a global batch of ``batch_size`` on
    ``contexts``; with ``config.dtype`` float16 or bfloat16, in mixed precision (`vargface.train.precision`),
    with the loss-scale input last."""
    import mxnet as mx

    from vargface.train import precision
    from vargface.train.losses import head_outputs

    side = int(config.image_size[0])
    emb_sym = embedding_symbol(config)
    train_emb = training_embedding(emb_sym, config.train_graph, contexts)
    extra_losses = plugin.extra_losses(train_emb, config)
    data_shapes = [("data", (batch_size, 3, side, side))] + [(n, tuple(s)) for n, s in plugin.extra_inputs(batch_size)]
    if config.fc_parallel:  # the classifier lives outside the graph, sharded (vargface.train.partial_fc)
        extras, label_shapes = extra_losses, []
        heads = [train_emb] + [symbol for symbol, _ in extras]
    else:
        head_input = mx.sym.BlockGrad(train_emb) if plugin.detach_margin_loss() else train_emb
        head = head_outputs(head_input, config)
        extras = head[1:] + extra_losses  # (Symbol, metric name) after the class probabilities
        heads = [head[0][0]] + [symbol for symbol, _ in extras]
        label_shapes = [("softmax_label", (batch_size,))]
    if config.dtype == precision.FLOAT32:
        train_sym = mx.sym.Group(heads)
    else:
        data_shapes.append((precision.SCALE_INPUT, (batch_size,)))
        train_sym = precision.convert(mx.sym.Group(precision.scale_loss_gradients(heads)), config.dtype,
                                      [name for name, _ in data_shapes + label_shapes])
    return TrainingGraph(emb_sym, train_sym, data_shapes, label_shapes, [name for _, name in extras])


def build_training_module(config, plugin=None, contexts=None):
    """(TrainingGraph, Module bound for training and initialised by ``config.net_init``) of ``config`` on
    ``contexts`` (default: ``config.ctx``), with ``config.per_batch_size`` images per device: the graph fit()
    trains, ready for the benchmarks' SGD steps."""
    from vargface.context import parse_ctx

    contexts = contexts or parse_ctx(config.ctx, option="--ctx")
    graph = training_graph(config, plugin or TrainerPlugin(), int(config.per_batch_size) * len(contexts),
                           contexts)
    module = graph.bind(contexts)
    module.init_params(make_initializer(config.net_init))
    return graph, module


def chosen_train_graph(train_graph, contexts):
    """``fast`` or ``faithful`` for ``--train-graph`` on ``contexts``: ``auto`` takes the rewrite (right slope
    gradients, fast CPU kernels) on every device, unless the devices are GPUs on which a check shows MXNet's own
    PReLU slope gradient right (`vargface.symbols.fast.prelu_kernel_right`)."""
    if train_graph != "auto":
        return train_graph
    from vargface.symbols.fast import prelu_kernel_right

    gpus = [ctx for ctx in contexts if ctx.device_type == "gpu"]
    return "faithful" if gpus and prelu_kernel_right(gpus[0]) else "fast"


def training_embedding(emb_sym, train_graph, contexts):
    """The embedding graph the optimizer trains: the faithful one, or its rewrite (`vargface.symbols.fast`: the
    same arrays and function in ops with fast CPU kernels, and right slope gradients where MXNet's PReLU gives
    wrong ones), as `chosen_train_graph` decides."""
    if chosen_train_graph(train_graph, contexts) != "fast":
        return emb_sym
    from vargface.symbols.fast import fast_graph

    return fast_graph(emb_sym)


def check_devices(config, contexts):
    """Refuse a kvstore or precision ``contexts`` cannot train with, naming the option; returns warnings."""
    from vargface.train.precision import check_devices as check_precision

    gpus = [ctx for ctx in contexts if ctx.device_type == "gpu"]
    devices = ",".join(f"{ctx.device_type}:{ctx.device_id}" for ctx in contexts)
    if config.kvstore == "nccl" and len(gpus) != len(contexts):
        raise VargfaceError(f"--kvstore nccl sums gradients between the GPUs of one machine (NCCL), but --ctx "
                            f"{devices} names CPUs; use --kvstore device")
    check_precision(config.dtype, contexts)
    if config.kvstore == "local" and gpus and len(contexts) > 1:
        return [f"--kvstore local sums the {len(contexts)} GPUs' gradients on the host (CPU), through PCIe every "
                f"step; --kvstore device sums them on the GPUs and --kvstore nccl over NCCL"]
    return []


def current_params(module):
    """A bound training Module's (arg_params, aux_params) once every queued operation has finished. MXNet's CPU
    BatchNorm updates its moving statistics in the backward pass without declaring that it writes them, so
    ``Module.get_params`` alone may copy them before the last step's update: a timing-dependent one-step lag that
    made saved states and verification rounds differ between identical runs."""
    import mxnet as mx

    mx.nd.waitall()
    return module.get_params()


def _seed_rngs(seed, step):
    import mxnet as mx

    value = (int(seed) * 1000003 + int(step)) % (2 ** 31)
    mx.random.seed(value)
    np.random.seed(value)


class _StopFlag:
    """SIGINT/SIGTERM during fit set a flag; the loop stops at the next batch boundary and saves its state."""

    def __init__(self):
        self.signal, self._old = None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class _Run:
    """One training run: its files, data, graph, Module and state; fit() drives it."""

    def __init__(self, config, plugin, contexts, log, graph=None, label="vargface train"):
        import mxnet as mx

        self.plugin, self.contexts, self.label = plugin, contexts, label
        warnings = check_devices(config, contexts)
        self.dist = config.kvstore.startswith("dist")
        self.kv = mx.kv.create(config.kvstore) if self.dist else None
        self.rank, self.workers = (self.kv.rank, self.kv.num_workers) if self.dist else (0, 1)
        # dist_sync workers train in step (sums, gathers and shared decisions); dist_async ones each on their own
        self.asynchronous = config.kvstore == "dist_async"
        self.group = WorkerGroup(None if self.asynchronous else self.kv)
        # a distributed run's workers log as one stream: each line says whose it is
        self.log = (lambda line: log(f"[worker {self.rank}/{self.workers}] {line}")) if self.dist else log
        for warning in warnings:
            self.say(f"warning: {warning}")
        self.files = RunFiles(resolve_prefix(config))
        if self.rank > 0:
            self.files = self.files.worker(self.rank)
        self.prefix = self.files.prefix
        make_folder(os.path.dirname(os.path.abspath(self.prefix)), f"--prefix {self.prefix}")
        self.lock = ckpt.PrefixLock(self.prefix).acquire()
        try:
            failure = None
            try:
                self._claim(config)
                self._build(config, graph)
            except Exception as error:  # noqa: BLE001  (raised again below, once the others know)
                failure = error
            # every worker learns whether all could start: one that stops alone leaves the others waiting
            others = [r for r in self.group.raised("start", {"failed": failure is not None})["failed"]
                      if r != self.rank]
            if failure is not None:
                raise failure
            if others:
                raise VargfaceError(f"worker(s) {', '.join(map(str, others))} of this run could not start (their "
                                    f"output says why); this worker stops too")
        except BaseException:
            self.lock.release()
            raise

    def say(self, text):
        self.log(f"{self.label}: {text}")

    @property
    def where(self):
        """' on worker K' in a distributed run's messages."""
        return f" on worker {self.rank}" if self.dist else ""

    def _claim(self, config):
        """Under the lock: a fresh run needs an empty prefix, or --overwrite, which removes the old run's files
        first (an old run's later checkpoints or log would otherwise mix with the new one's)."""
        old = self.files.existing()
        if config.resume or not old:
            return
        if not config.overwrite:
            raise VargfaceError(f"--prefix {self.prefix} already holds a run ({len(old)} files, e.g. {old[0]}); pass "
                                f"--resume to continue it or --overwrite to start a new one there")
        for path in old:
            os.remove(path)
        self.say(f"--overwrite: removed the {len(old)} files of the previous run under {self.prefix}")

    def _build(self, config, graph):
        import mxnet as mx

        from vargface.train.config import open_data, resolve_dataset

        data = open_data(config)
        self.config = config = resolve_dataset(config, data)
        size = int(config.image_size[0])
        self.data_shape = (3, size, size)
        self.batch_size = int(config.per_batch_size) * len(self.contexts)
        # The kvstore sums the devices' (and workers') gradients; the optimizer scales the sum back to a mean.
        self.rescale_grad = 1.0 / (len(self.contexts) * self.workers)
        self.graph = graph or training_graph(config, self.plugin, self.batch_size, self.contexts)
        self.emb_sym, self.train_sym = self.graph.emb_sym, self.graph.train_sym
        self.head = self._classifier(config)
        self.extra_names = self.graph.extra_names
        # The release clips the embedding network's gradients only, not the classifier's.
        self.clip = (set(self.emb_sym.list_arguments()) - {"data"}, float(config.clip_grad_norm)) \
            if float(config.clip_grad_norm) > 0 else None
        self.record_of_run = dict(self.settings(), data=data.fingerprint())

        # Everything a resume or --pretrained needs is checked before any training work.
        self.resume_from = None
        if config.resume:
            info, arg, aux, states = ckpt.load_state(self.files, trust_states=bool(config.trust_states))
            shards = self._check_shards(info)
            ckpt.check_compatible(info, arg, aux, self.train_sym, self.graph.data_shapes + self.graph.label_shapes,
                                  config, self.files.state)
            recorded = info.get("run") or ckpt.saved_config_record(self.files.config, self.record_of_run)
            ckpt.check_resume(recorded, self.record_of_run, self.files.state if info.get("run") else
                              self.files.config)
            self.resume_from = (TrainState.from_info(info, self.files.state), arg, aux, states, shards)
            if self.already_finished():
                return  # nothing is written
        self.pretrained = ({}, {})
        if config.pretrained and not config.resume:
            self.pretrained = ckpt.load_pretrained(config.pretrained, self.emb_sym, (1,) + self.data_shape)

        self.train_iter = data.iterator(self.batch_size, size, shuffle=True, rand_mirror=bool(config.data_rand_mirror),
                                        cutoff=int(config.data_cutoff), color_jittering=int(config.data_color),
                                        seed=int(config.seed), part_index=self.rank, num_parts=self.workers,
                                        num_workers=config.data_workers,
                                        pinned=any(c.device_type == "gpu" for c in self.contexts))
        self.iters_per_epoch = self.train_iter.num_batches
        self.val_sets = self._load_val_sets()
        self.module = self.graph.bind(self.contexts)
        from vargface.train.step import TrainStep

        # The devices' gradients are summed by a KVStore: a dist_sync run's own (over the workers too), else one of
        # this run's; one device alone needs none, and dist_async's Module sums and updates on its servers.
        if self.dist:
            aggregator = None if self.asynchronous else self.kv
        else:
            aggregator = mx.kv.create(config.kvstore) if len(self.contexts) > 1 else None
        self.step = TrainStep(self.module, self.contexts, self.extra_names, kvstore=aggregator, clip=self.clip,
                              mixed=config.dtype != FLOAT32, rescale_grad=self.rescale_grad, head=self.head,
                              detach=self.plugin.detach_margin_loss(), group=self.group)
        self.infer = None
        from vargface.train.config import save_config

        header = f"what ran at {self.prefix}, resolved; {self.plugin.rerun(self.files)}"
        save_config(config, self.files.config, [header], self.described())
        self.say(f"settings checked, saved to {self.files.config}")
        for line in self.classifier_lines:
            self.say(line)

    def _classifier(self, config):
        """The sharded classifier of --fc-parallel (None: the head is in the graph); either way the classifier's
        memory per device is refused when it cannot fit, before anything is allocated, and stated once the
        settings are checked."""
        from vargface.train.partial_fc import PartialFC, check_fits, fc7_memory

        head = PartialFC(config, self.contexts, config.sample_ratio, self.group) if config.fc_parallel else None
        memory = fc7_memory(int(config.num_classes), int(config.emb_size), int(config.per_batch_size),
                            len(self.contexts), self.workers, float(config.sample_ratio), parallel=head is not None)
        check_fits(memory, self.contexts)
        self.classifier_lines = [memory.line() + (f"; {head.layout}" if head else "")]
        if head and head.sample_ratio < 1:
            self.classifier_lines.append(f"--sample-ratio {head.sample_ratio:g}: loss and acc are over the sampled "
                                         f"centres")
        return head

    def _check_shards(self, info):
        """The shard file of a state to resume; a state of another classifier or shard layout is refused, naming
        both."""
        shards = ckpt.shards_file(self.files, info)
        if (self.head is None) != (shards is None):
            raise VargfaceError(f"--resume: {self.files.state} holds a sharded classifier (--fc-parallel): resume "
                                f"with it" if shards else f"--resume: {self.files.state} holds a classifier that is "
                                f"not sharded; this run shards it (--fc-parallel): resume without --fc-parallel")
        if shards is None:
            return None
        saved = info["fc7_shards"].get("layout")
        if saved != str(self.head.layout):
            raise VargfaceError(f"--resume: {self.files.state} holds the classifier as {saved}; this run splits it "
                                f"as {self.head.layout}. Resume with the same devices (--ctx) and workers, or merge "
                                f"the shards (`vargface merge-fc7`)")
        return shards

    def settings(self):
        """The settings a resume must find unchanged: the schema's resume keys and the run's devices and workers."""
        from vargface.train.schema import RESUME_KEYS

        values = self.config.to_dict()
        return {**{key: values[key] for key in RESUME_KEYS if key in values}, "contexts": len(self.contexts),
                "workers": self.workers}

    def nothing_to_do(self, state):
        """True when ``state`` has reached end_epoch or max_steps."""
        max_steps = int(self.config.max_steps)
        return state.epoch >= int(self.config.end_epoch) or bool(max_steps and state.num_update >= max_steps)

    def last_update(self, state):
        """True when the update just made ends the run (its final checkpoint follows)."""
        ends_epochs = state.epoch + 1 >= int(self.config.end_epoch) and state.batch >= self.iters_per_epoch
        return ends_epochs or self.nothing_to_do(state)

    def already_finished(self):
        """A resumed state whose final checkpoint is written and that has nothing left to train."""
        state = self.resume_from[0] if self.resume_from else None
        return state is not None and state.finished and self.nothing_to_do(state)

    def described(self):
        """What the saved config records beyond the config keys."""
        return {"plugin": self.plugin.describe(), "workers": self.workers, "rank": self.rank,
                "contexts": [str(c) for c in self.contexts],
                "dataset_dir": os.path.abspath(self.config.dataset_path)}

    def _load_val_sets(self):
        from vargface.eval.verification import load_pairs
        from vargface.train.config import verification_packs

        return [(name, *load_pairs(path, self.data_shape[1])) for name, path in verification_packs(self.config)]

    # ---- state -------------------------------------------------------------------------------------------------
    def fresh_state(self):
        import mxnet as mx

        from vargface.train.losses import initial_classifier

        _seed_rngs(self.config.seed, 0)
        arg, aux = self.pretrained
        c = self.config
        if self.head:
            self.head.init_weights(c.seed)
        elif "fc7_weight" in self.train_sym.list_arguments():  # the classifier the sharded head starts from too
            arg = {**arg, "fc7_weight": mx.nd.array(initial_classifier(c.seed, c.fc7_init_sigma, 0,
                                                                       int(c.num_classes), int(c.emb_size)))}
        self.module.init_params(make_initializer(c.net_init), arg_params=arg or None, aux_params=aux or None,
                                allow_missing=True, force_init=True)
        if self.pretrained[0]:
            self.say(f"embedding initialised from --pretrained {c.pretrained}")
        return TrainState()

    def restore(self, state, arg, aux, states, shards=None):
        from vargface.train.partial_fc import load_shards

        self.module.set_params(arg, aux, allow_missing=False, force_init=True, allow_extra=True)
        if self.head:
            load_shards(shards, self.head)
        return state, states

    def init_optimizer(self, state, states=None):
        from vargface.train.lr_scheduler import build

        c = self.config
        schedule = build(c, self.iters_per_epoch, scale=state.lr_scale)
        params = {"learning_rate": float(c.lr), "momentum": float(c.mom), "wd": float(c.wd),
                  "rescale_grad": self.rescale_grad, "lr_scheduler": schedule,
                  "begin_num_update": int(state.num_update), "multi_precision": c.dtype != FLOAT32}
        # Only dist_async updates on its servers; otherwise the step sums the gradients (`self.step`) and every
        # device updates its copy, so the optimizer's momentum is here for the training state.
        self.module.init_optimizer(kvstore=self.kv if self.asynchronous else None, optimizer="sgd",
                                   optimizer_params=params, force_init=True)
        ckpt.restore_optimizer(self.module, states)
        self.schedule = schedule
        self.step.start(LossScale(state.loss_scale or INITIAL_SCALE, state.loss_scale_clean)
                        if c.dtype != FLOAT32 else None, schedule)

    def save_state(self, state):
        scale = self.step.scale
        if scale is not None:  # mixed precision: the loss scale reached, for a resume or a rollback
            state.loss_scale, state.loss_scale_clean = scale.scale, scale.clean
        arg, aux = current_params(self.module)
        info = dict(state.info(), network=self.config.network, seed=int(self.config.seed),
                    num_classes=int(self.config.num_classes), run=self.record_of_run,
                    saved=time.strftime("%Y-%m-%d %H:%M:%S"))
        ckpt.save_state(self.files, info, arg, aux, self.module, classifier=self.head)

    def save_embedding(self, number):
        arg, aux = current_params(self.module)
        ckpt.save_embedding(self.prefix, number, self.emb_sym, arg, aux)
        return self.files.model(number)

    # ---- verification ------------------------------------------------------------------------------------------
    def verify(self):
        """Accuracy-Flip (docs/metric.md) on each target with the current weights: an `InferenceRunner` on its own
        executors gets a copy of the training module's weights every round (cheap next to the forward passes), so
        it computes exactly what `vargface verify` computes on the checkpoint saved from the same weights."""
        from vargface.eval.runner import InferenceRunner
        from vargface.eval.verification import evaluate

        arg, aux = current_params(self.module)
        if self.infer is None:
            self.infer = InferenceRunner(self.emb_sym, arg, aux, ctx=self.contexts, batch_size=self.batch_size,
                                         input_size=self.data_shape[1], source="the training network")
        else:
            self.infer.set_params(arg, aux)
        results = {}
        for name, images, issame in self.val_sets:
            emb = self.infer.embed_prepared(images, dtype=np.float64)
            result = evaluate(emb, issame, nrof_folds=min(10, len(issame)))
            results[name] = {"accuracy": result["accuracy"], "std": result["std"]}
        return results

    # ---- logging -----------------------------------------------------------------------------------------------
    def record(self, entry, history):
        history.append(entry)
        with open(self.files.log, "a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")

    def result(self, state, history, interrupted=False):
        return {"prefix": self.prefix, "epoch": state.last_checkpoint,
                "best": (state.best or {}).get("results", {}),
                "best_checkpoint": self.files.best.model(state.best_number) if state.best_number else None,
                "history": history, "num_update": state.num_update, "interrupted": interrupted}


def fit(config, plugin=None, ctx=None, log=print, graph=None, label="vargface train"):
    """Train ``config`` (a `vargface.train.config.RunConfig`); returns {'prefix', 'epoch' (last saved checkpoint
    number), 'best' ({target: {'accuracy', 'std'}} of the best verification round), 'best_checkpoint', 'history',
    'num_update', 'interrupted' (False, or the number of the signal that stopped it)}.

    ``config.resume`` continues from ``PREFIX-state.json``; ``config.pretrained`` ('prefix,epoch') initialises the
    embedding only. ``ctx`` (list of mx.Context) overrides ``config.ctx``; ``graph`` is the `TrainingGraph` when the
    caller built it already (distillation builds its loss graph once for every generation); ``label`` starts
    every line the run logs."""
    from vargface.context import parse_ctx

    plugin = plugin or TrainerPlugin()
    contexts = ctx or parse_ctx(config.ctx, option="--ctx")
    run = _Run(config, plugin, contexts, log, graph, label)
    try:
        return _fit(run)
    finally:
        run.lock.release()


def _fit(run):
    config = run.config
    if run.already_finished():
        state = run.resume_from[0]
        run.say(f"{run.prefix} already finished at update {state.num_update}; nothing changed (raise --max-steps or "
                f"--end-epoch to train on)")
        return run.result(state, [])
    if run.resume_from is not None:
        state, states = run.restore(*run.resume_from)
        run.say(f"resuming {run.prefix} at epoch {state.epoch} batch {state.batch} (update {state.num_update})")
    else:
        state, states = run.fresh_state(), None
    run.init_optimizer(state, states)
    if run.resume_from is None:
        run.save_state(state)  # the rollback target before the first checkpoint
    history, rollbacks = [], 0
    if run.resume_from is None and run.val_sets:
        _verify_round(run, state, history, baseline=True)  # the initial weights: the baseline of the curves
    with _StopFlag() as stop:
        while True:
            try:
                state, interrupted = _train(run, state, history, stop)
                break
            except NanLoss as nan:
                if config.on_nan == "stop":
                    raise VargfaceError(f"training stopped: {nan}; the last good state is {run.files.state}. Lower "
                                        f"--lr, add --warmup-steps, or pass --on-nan rollback") from None
                rollbacks += 1
                if rollbacks > int(config.nan_max_rollbacks):
                    raise VargfaceError(f"training stopped: {nan} again after {rollbacks - 1} rollbacks "
                                        f"(--nan-max-rollbacks {config.nan_max_rollbacks})") from None
                # Lower the scale the run had reached, not the saved state's: a NaN before the next save (whose
                # state still holds the old scale) lowers it again.
                lr_scale = float(state.lr_scale) * float(config.nan_lr_factor)
                info, arg, aux, states = ckpt.load_state(run.files)
                state, states = run.restore(TrainState.from_info(info, run.files.state), arg, aux, states,
                                            ckpt.shards_file(run.files, info))
                state.lr_scale = lr_scale
                run.init_optimizer(state, states)
                run.say(f"{nan}; rolled back to update {state.num_update} with the learning rate x{state.lr_scale:g}")
                run.record({"type": "rollback", "step": state.num_update, "at": nan.step + 1,
                            "lr_scale": state.lr_scale, "metric": nan.metric}, history)
    return run.result(state, history, interrupted)


def _verify_round(run, state, history, baseline=False):
    """Verify on every target, log it; returns the mean accuracy (the score the best checkpoint is chosen by).
    The ``baseline`` round (the weights before the first update: untrained, or --pretrained as a later
    distillation generation starts) is logged but never counts as the best."""
    results = run.last_results = run.verify()
    score = float(np.mean([r["accuracy"] for r in results.values()]))
    run.record({"type": "verify", "step": state.num_update, "epoch": state.epoch, "score": score,
                **{f"{k}_acc": v["accuracy"] for k, v in results.items()}}, history)
    best = max(score, state.best["score"]) if state.best else score
    run.log(f"[{state.num_update}] verification: " + "  ".join(
        f"{k} {v['accuracy']:.5f}+-{v['std']:.5f}" for k, v in results.items())
        + ("  (baseline: before the first update)" if baseline else f"  (best {best:.5f})"))
    return score


def _checkpoint(run, state, history, final=False):
    """Verification round + checkpoint by InsightFace's --ckpt rule (0 none, 1 when verification improves,
    2 every round, 3 the latest as number 1); the best round is also kept as PREFIX_best."""
    c = run.config
    arg, aux = current_params(run.module)
    # The loss is checked before each update, the weights that update made only here: nothing non-finite is saved.
    bad = next((name for name, value in {**arg, **aux}.items() if not np.isfinite(value.asnumpy()).all()), None)
    bad = bad or (run.head.first_nonfinite() if run.head else None)
    elsewhere = [r for r in run.group.raised("weights", {"bad": bad is not None})["bad"] if r != run.rank]
    if bad or elsewhere:  # made by the last update, which may have ended an epoch
        epoch, batch = (state.epoch, state.batch - 1) if state.batch else (state.epoch - 1, run.iters_per_epoch - 1)
        metric = f"weight {bad}" if bad else f"a weight of worker {elsewhere[0]}"
        raise NanLoss(metric, "non-finite", epoch, batch, state.num_update - 1, run.where if bad else "")
    state.msave += 1
    number = 1 if int(c.ckpt) == 3 else state.msave
    improved = False
    if run.val_sets:
        score = _verify_round(run, state, history)
        improved = state.best is None or score >= state.best["score"]
        if improved:
            state.best = {"score": score, "step": state.num_update, "results": run.last_results}
    save = {0: False, 1: improved or not run.val_sets, 2: True, 3: True}.get(int(c.ckpt), True) or \
        (final and int(c.ckpt) != 0)
    if save:
        state.last_checkpoint = number
        run.save_embedding(number)
    if improved:  # keep only the best round's files under PREFIX_best
        best = run.files.best
        ckpt.save_embedding(best.prefix, state.msave, run.emb_sym, arg, aux)
        if state.best_number and state.best_number != state.msave and os.path.exists(best.params(state.best_number)):
            os.remove(best.params(state.best_number))
        state.best_number = state.msave
    state.finished = final
    run.save_state(state)


def _train(run, state, history, stop):
    """The batch loop from ``state``; returns (state, interrupted: False or the signal number). Raises NanLoss for
    the first bad batch: before its update when the step synced anyway (clipping, mixed precision), else at the
    next logged line, checkpoint or stop, before anything is saved (`vargface.train.step`)."""
    c, step = run.config, run.step
    window, tic, max_steps = Window(step.names, step.counts), time.time(), int(c.max_steps)
    while not run.nothing_to_do(state):
        run.train_iter.set_epoch(state.epoch, start_batch=min(state.batch, run.train_iter.num_batches))
        for batch in run.train_iter:
            if max_steps and state.num_update >= max_steps:
                break
            run.plugin.before_batch(state.epoch, state.num_update)
            step.stage(batch)
            extra = run.plugin.extra_data(batch)
            _seed_rngs(c.seed, state.num_update + 1)
            where = (state.epoch, state.batch, state.num_update)
            outcome = step(batch, extra, where, stopping=stop.signal is not None)
            state.batch += 1
            if outcome.skipped:
                window.skipped()
                _overflowed(run, state, where, history)
            else:
                state.num_update += 1
                window.add(outcome.row, where)
                _count_clean_update(run, state)
                if state.num_update % int(c.frequent) == 0:
                    _speedometer(run, state, window, tic, history)
                    window.reset()
                    tic = time.time()
                if state.num_update % int(c.verbose) == 0 and not run.last_update(state):
                    window.check()
                    _checkpoint(run, state, history)
            if outcome.signalled:
                window.check()
                cause = f"signal {stop.signal}" if stop.signal is not None else \
                    f"a signal to worker {outcome.signalled[0]}"
                run.say(f"stopping on {cause} at update {state.num_update}; continue with --resume")
                run.save_state(state)
                return state, int(stop.signal or signal.SIGTERM)
        else:
            state.epoch, state.batch = state.epoch + 1, 0
    window.check()
    _checkpoint(run, state, history, final=True)
    return state, False


def _overflowed(run, state, where, history):
    """Mixed precision: the step's gradients overflowed and its update was skipped; halve the loss scale. At the
    scale's floor the gradient is not finite at any scale: the NaN guard's case."""
    scale = run.step.scale
    before = scale.scale
    if not scale.overflowed():
        raise NanLoss("gradient", "non-finite", *where)
    run.step.set_scale()
    run.say(f"the gradients of update {where[2] + 1} overflowed at loss scale {before:g}: batch skipped, loss scale "
            f"now {scale.scale:g}")
    run.record({"type": "overflow", "step": state.num_update, "epoch": where[0], "batch": where[1],
                "loss_scale": scale.scale}, history)


def _count_clean_update(run, state):
    """Mixed precision: count an update without overflow; the loss scale doubles after a long run of them."""
    scale = run.step.scale
    if scale is None:
        return
    if scale.updated():
        run.step.set_scale()
        run.say(f"update {state.num_update}: loss scale raised to {scale.scale:g}")


def _speedometer(run, state, window, tic, history):
    """InsightFace-style progress line plus the same numbers as a JSON line; the window's metrics come from the
    devices here, in one copy, and the NaN guard checks them."""
    window.check()
    speed = window.batches * run.batch_size / max(time.time() - tic, 1e-9)
    lr = run.schedule(state.num_update)
    averages = window.averages()
    run.log(f"Epoch[{state.epoch}] Batch[{state.batch}] Update[{state.num_update}] Speed: {speed:.2f} samples/sec"
            f" ({speed / len(run.contexts):.2f}/device) " + " ".join(f"{k}={v:.6f}" for k, v in averages.items())
            + f" lr={lr:.6g}")
    run.record({"type": "train", "epoch": state.epoch, "batch": state.batch, "step": state.num_update,
                "speed": speed, "lr": lr, "time": time.time(), **averages}, history)


def serve(role):
    """Run this process as a parameter-server ``role`` ('server' or 'scheduler') until the workers finish.

    A vargface run's servers only sum (its workers update, `vargface.train.workers`). Plain
    ``DMLC_ROLE=server python -c 'import mxnet'`` would serve that too, but starts serving inside the mxnet import,
    where a server handed an optimizer could not unpickle it (the LR schedule needs gluoncv, which needs a finished
    mxnet import); so import first, then take the role."""
    if role not in ("server", "scheduler"):
        raise VargfaceError(f"serve: role {role!r} must be 'server' or 'scheduler'")
    os.environ.pop("DMLC_ROLE", None)
    from mxnet.kvstore import kvstore_server

    import vargface.train.lr_scheduler  # noqa: F401  (classes the server unpickles)

    os.environ["DMLC_ROLE"] = role
    kvstore_server._init_kvstore_server_module()
