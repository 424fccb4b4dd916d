"""Training configuration in InsightFace's style: ``default``, ``network``, ``dataset`` and ``loss`` presets merged by
``generate_config(network, dataset, loss, **overrides)`` into one easydict whose key names follow InsightFace's
``config.py`` (per_batch_size, lr_steps, loss_s, loss_m1..m3, emb_size, ckpt, verbose, max_steps, ...), so users of
that code find their knobs where they expect them."""
import difflib
import json
import os

from easydict import EasyDict as edict

from vargface.errors import VargfaceError

# Options every run has; the network/dataset/loss presets below override some of them.
default = edict(
    network="vargfacenet", dataset="emore", loss="arcface",
    # network
    net_name="vargfacenet", emb_size=512, net_multiplier=None, net_num_layers=None,
    net_init="xavier_gaussian_out_2", fc7_init_sigma=0.01,
    fc7_lr_mult=1.0, fc7_wd_mult=1.0, fc7_no_bias=False,
    # data
    dataset_path="", num_classes=0, image_size=[112, 112], val_targets=["lfw", "cfp_fp", "agedb_30"],
    data_rand_mirror=True, data_cutoff=0, data_color=0, seed=0,
    # loss
    loss_name="margin_softmax", loss_s=64.0, loss_m1=1.0, loss_m2=0.5, loss_m3=0.0,
    loss_alpha=1.2, loss_sigma=2.0,
    # optimisation
    lr=0.1, wd=0.0005, mom=0.9, per_batch_size=128, kvstore="device", ctx="cpu",
    lr_schedule="step", lr_steps=[100000, 160000, 220000], lr_factor=0.1,
    warmup_steps=0, warmup_lr=0.0, lr_total_steps=0, lr_min=0.0,
    end_epoch=10000, max_steps=0,
    # bookkeeping (InsightFace meanings: frequent = log every N batches, verbose = verify + checkpoint every N)
    models_root="./models", prefix="", pretrained="", resume=False, ckpt=3, frequent=20, verbose=2000,
    on_nan="stop", nan_lr_factor=0.1, nan_max_rollbacks=3,
    # speed: which graph the optimizer trains (checkpoints always hold the faithful graph)
    train_graph="auto",
)

network = edict(
    vargfacenet=edict(net_name="vargfacenet", emb_size=512, net_init="xavier_gaussian_out_2",
                      lr_schedule="cosine", warmup_steps=2000, lr_total_steps=0),
    vargfacenet_insightface=edict(net_name="vargfacenet_insightface", emb_size=512,
                                  net_init="xavier_uniform_in_2"),
    r50=edict(net_name="r50", emb_size=512, net_init="xavier_gaussian_out_2"),
    r100=edict(net_name="r100", emb_size=512, net_init="xavier_gaussian_out_2"),
    y1=edict(net_name="y1", emb_size=128, net_init="xavier_gaussian_out_2"),
    y2=edict(net_name="y2", emb_size=256, net_init="xavier_gaussian_out_2"),
    # Small networks for tests, demos and CPU benchmarks.
    vargfacenet_tiny=edict(net_name="vargfacenet", emb_size=64, net_multiplier=0.25, image_size=[56, 56],
                           net_init="xavier_gaussian_out_2", per_batch_size=16, frequent=5, verbose=50),
    r18_tiny=edict(net_name="r50", net_num_layers=18, net_multiplier=0.125, emb_size=64, image_size=[32, 32],
                   net_init="xavier_gaussian_out_2", per_batch_size=16, frequent=5, verbose=50),
)

dataset = edict(
    emore=edict(dataset_path="../datasets/faces_emore", num_classes=85742, image_size=[112, 112],
                val_targets=["lfw", "cfp_fp", "agedb_30"]),
    retina=edict(dataset_path="../datasets/ms1m-retinaface-t1", num_classes=93431, image_size=[112, 112],
                 val_targets=["lfw", "cfp_fp", "agedb_30"]),
    # Any directory written by `vargface data`: num_classes from its `property`, val_targets = its *.bin files.
    folder=edict(dataset_path="", num_classes=0, val_targets=None),
)

loss = edict(
    softmax=edict(loss_name="softmax", fc7_no_bias=False),
    nsoftmax=edict(loss_name="margin_softmax", loss_s=64.0, loss_m1=1.0, loss_m2=0.0, loss_m3=0.0),
    arcface=edict(loss_name="margin_softmax", loss_s=64.0, loss_m1=1.0, loss_m2=0.5, loss_m3=0.0),
    cosface=edict(loss_name="margin_softmax", loss_s=64.0, loss_m1=1.0, loss_m2=0.0, loss_m3=0.35),
    combined=edict(loss_name="margin_softmax", loss_s=64.0, loss_m1=1.0, loss_m2=0.3, loss_m3=0.2),
    arcneg=edict(loss_name="arcneg", loss_s=64.0, loss_m1=1.0, loss_m2=0.5, loss_m3=0.0,
                 loss_alpha=1.2, loss_sigma=2.0),
)


# Keys that hold lists even where a preset leaves them unset (None).
LIST_KEYS = ("image_size", "val_targets", "lr_steps")


def _choose(kind, table, name):
    if name not in table:
        near = difflib.get_close_matches(str(name), table.keys(), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise VargfaceError(f"unknown {kind} preset {name!r}{hint} (choose from {', '.join(table)})")
    return table[name]


def check_key(config, key):
    """Raise a clear error for a key the config does not have, naming close matches."""
    if key not in config:
        near = difflib.get_close_matches(key, config.keys(), n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise VargfaceError(f"unknown config key {key!r}{hint}")


def parse_value(template, text, key):
    """Convert a command-line string to the type of the key's current value (lists are comma-separated)."""
    if not isinstance(text, str):
        return text
    try:
        if isinstance(template, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if isinstance(template, int):
            return int(text)
        if isinstance(template, float):
            return float(text)
        if isinstance(template, list) or key in LIST_KEYS or template is None and "," in text:
            items = [t for t in text.split(",") if t.strip()]
            kinds = {type(v) for v in (template or [])}
            cast = int if kinds == {int} or key in ("image_size", "lr_steps") else float if kinds == {float} else str
            return [cast(t.strip()) for t in items]
        if template is None:
            for cast in (int, float):
                try:
                    return cast(text)
                except ValueError:
                    pass
        return text
    except ValueError:
        raise VargfaceError(f"config key {key!r}: cannot read {text!r} as {type(template).__name__}") from None


def generate_config(network_name="vargfacenet", dataset_name="emore", loss_name="arcface", **overrides):
    """Merge default <- network <- dataset <- loss presets <- overrides; unknown presets or keys raise.

    ``dataset_name`` may also be a directory made by `vargface data` (the ``folder`` preset)."""
    config = edict(json.loads(json.dumps(default)))
    if dataset_name not in dataset and os.path.isdir(str(dataset_name)):
        overrides.setdefault("dataset_path", dataset_name)
        dataset_name = "folder"
    for kind, table, name in (("network", network, network_name), ("dataset", dataset, dataset_name),
                              ("loss", loss, loss_name)):
        config.update(json.loads(json.dumps(_choose(kind, table, name))))
        config[kind] = name
    for key, value in overrides.items():
        check_key(config, key)
        config[key] = parse_value(config[key], value, key)
    if isinstance(config.image_size, int) or len(config.image_size) == 1:
        side = int(config.image_size if isinstance(config.image_size, int) else config.image_size[0])
        config.image_size = [side, side]
    return config


def resolve_dataset(config):
    """Fill num_classes / val_targets from the data directory and check that its `property` agrees."""
    from vargface.data.recordio import read_property

    path = config.dataset_path
    if not path:
        raise VargfaceError(f"dataset {config.dataset!r} needs a directory: pass --dataset-path DIR")
    rec = os.path.join(path, "train.rec")
    if not os.path.isfile(rec):
        raise VargfaceError(f"dataset directory {path}: no train.rec (make one with `vargface data`)")
    num_classes = read_property(path)[0]  # the iterator resizes images to image_size
    if config.num_classes and config.num_classes != num_classes:
        raise VargfaceError(f"{os.path.join(path, 'property')} says {num_classes} classes but the config says "
                            f"num_classes={config.num_classes} (dataset preset {config.dataset!r}); "
                            f"fix the data directory or pass --num-classes {num_classes}")
    config.num_classes = num_classes
    if config.val_targets is None:
        config.val_targets = sorted(f[:-4] for f in os.listdir(path) if f.endswith(".bin"))
    for name in config.val_targets:
        if not os.path.isfile(os.path.join(path, name + ".bin")):
            raise VargfaceError(f"verification target {name!r}: {os.path.join(path, name + '.bin')} does not "
                                f"exist (set --val-targets to the .bin files you have, or '' for none)")
    return config


def save_config(config, path, extra=None):
    """Write the resolved config as JSON (atomically) beside the checkpoints."""
    from vargface.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump({**config, **(extra or {})}, f, indent=1, sort_keys=True)
